#!/usr/bin/env bash
# The test suite: pytest here, and the tests marked aarch64 again on an emulated Raspberry Pi 5
# (tools/aarch64.sh), both at once. The emulated job spends most of its time compiling the
# kernels under qemu on one core, so running it beside the native tests, rather than after
# them, takes the native tests' time off the whole. Its output is shown when it ends; the
# exit status is the first failure's (pytest's 5, no test collected, included).
#
#   bash tools/test.sh            both
#   bash tools/test.sh -x -q      pytest's arguments go to both
set -uo pipefail
cd "$(dirname "$0")/.."
pi_log=$(mktemp -t edgert-aarch64.XXXXXX)
bash tools/aarch64.sh -m pytest -m aarch64 "$@" >"$pi_log" 2>&1 &
pi=$!
trap 'kill $pi 2>/dev/null' INT TERM
python3 -m pytest "$@"
native=$?
echo "--- the emulated Raspberry Pi 5 (tools/aarch64.sh), run beside the tests above ---"
wait $pi
emulated=$?
cat "$pi_log"
rm -f "$pi_log"
[ $native -ne 0 ] && exit $native
exit $emulated
