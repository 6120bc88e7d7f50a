#!/bin/sh
# anyk vs PyTorch peer tokens/s; see bench/compare.py --help.
exec /usr/bin/python3 "$(dirname "$0")/compare.py" "$@"
