// `anyk eval`: loads run_dir/config.ini and model.h5, a checkpoint directory, or a
// weights/consolidated file; evaluates each requested setting (eval/), prints a table and
// optionally writes JSON, CSV and a plot.
#pragma once
#include <string>
#include <vector>

namespace anyk::launch {

// `anyk eval`: argv after the command name. Returns the exit code.
int eval_command(int argc, char** argv);

// Runs tools/SCRIPT --out plot_path --label label on the JSON text (written next to the plot
// and removed after); throws naming the command when it fails.
void run_plot(const std::string& script, const std::string& plot_path, const std::string& label,
              const std::string& json);

// "1.5,2.5" -> {1.5, 2.5}; throws naming the option.
std::vector<double> parse_double_list(const std::string& text, const std::string& option);

}  // namespace anyk::launch
