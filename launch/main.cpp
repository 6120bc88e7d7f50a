// The `anyk` executable: hands argv to the command dispatcher in launch/cli.cpp.
#include "launch/cli.h"

int main(int argc, char** argv) { return anyk::run_cli(argc, argv); }
