#!/usr/bin/env bash
# The test suites of `make test`, in two lanes that run at the same time.
#
#   tests/run_suites.sh PYTHON "jax tensorflow torch" SLOW_BACKEND [pytest args...]
#
# Suites: the fast suite ("not slow") under each backend, and the slow suite
# (the real models) under SLOW_BACKEND. Most tests use about one core (a
# Python loop, one XLA compile, one subprocess at a time), so on a 2-core
# CI machine two lanes finish far sooner than one queue:
#   lane 1: the slow suite, then every other backend's fast suite from the second;
#   lane 2: the first backend's fast suite, then every other one from the third.
# TEST_LANES=1 runs everything in one queue instead. Lane 2 prints as it
# runs; lane 1 writes a log that is printed whole when it ends. Any failure,
# or a suite that runs no test (pytest exit code 5), fails the run; the
# other lane is stopped then.
set -uo pipefail

PY=$1
read -r -a BACKENDS <<< "$2"
SLOW_BACKEND=$3
shift 3
PYTEST_ARGS=("$@")

suite() {  # suite BACKEND MARKER
    echo "=== KERAS_BACKEND=$1 (-m \"$2\") ==="
    local start=$SECONDS
    KERAS_BACKEND=$1 "$PY" -m pytest -q -p no:cacheprovider -m "$2" \
        "${PYTEST_ARGS[@]}" tests
    local rc=$?
    echo "=== KERAS_BACKEND=$1 (-m \"$2\"): exit $rc after $((SECONDS - start)) s ==="
    return $rc
}

lane() {  # lane "BACKEND:MARKER" ... ; stops at the first failure
    local item
    for item in "$@"; do
        suite "${item%%:*}" "${item#*:}" || return 1
    done
}

lane1=("$SLOW_BACKEND:slow")
lane2=()
for i in "${!BACKENDS[@]}"; do
    if (( i % 2 == 1 )); then
        lane1+=("${BACKENDS[i]}:not slow")
    else
        lane2+=("${BACKENDS[i]}:not slow")
    fi
done

if [[ "${TEST_LANES:-2}" == 1 ]]; then
    lane "${lane2[@]}" "${lane1[@]}"
    exit $?
fi

logs=$(mktemp -d)
lane "${lane1[@]}" > "$logs/lane1.log" 2>&1 &
pid1=$!
(lane "${lane2[@]}" 2>&1 | tee "$logs/lane2.log") &
pid2=$!
kill_tree() {  # a process and everything it started
    local child
    for child in $(pgrep -P "$1"); do kill_tree "$child"; done
    kill "$1" 2>/dev/null
}
stop() { kill_tree "$1"; wait "$1" 2>/dev/null; }
trap 'stop $pid1; stop $pid2; exit 130' INT TERM
echo "Two lanes: [${lane1[*]}] and [${lane2[*]}]; logs in $logs"

# Whichever lane ends first is printed first; a failure stops the other.
rc=0
running=("$pid1" "$pid2")
while (( ${#running[@]} )); do
    wait -n -p done_pid "${running[@]}"
    status=$?
    running=("${running[@]/$done_pid}")
    running=(${running[@]})
    name=$([[ $done_pid == "$pid1" ]] && echo lane1 || echo lane2)
    [[ $name == lane1 ]] && cat "$logs/lane1.log"  # lane 2 prints as it runs
    if (( status != 0 )); then
        echo "!!! $name failed (exit $status); stopping the other lane"
        rc=$status
        for pid in "${running[@]}"; do
            stop "$pid"
            [[ $pid == "$pid1" ]] && cat "$logs/lane1.log"
        done
        break
    fi
done
exit $rc
