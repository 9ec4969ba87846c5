# Step runner of bench/gpu_check.sh (sourced, not run): every step is time-boxed and logged,
# its status kept, and a failed step does not stop the ones after it.
#
#     source bench/gpu_steps.sh            # needs $OUT, the folder for the logs
#     run_step [-q] NAME SECONDS COMMAND [ARG...]
#     steps_finish                          # the table of statuses; returns the first failure's
#
# COMMAND runs under `timeout SECONDS` (then SIGKILL 10 s later) in a child bash, so it may be a
# function exported with `export -f` (and the variables it reads exported too). Its output goes
# to $OUT/gpu-NAME.log and to stdout; with -q to the log only, and its last 30 lines are printed
# when it fails. run_step returns COMMAND's exit status: 124 when it ran out of time, 137 when it
# was killed (after the grace period, or out of memory). steps_finish returns the status of the
# first step that failed, 0 when all passed.

STEP_NAMES=()
declare -A STEP_STATUS=()
FIRST_FAILURE=0

run_step() {
  local quiet=0 rc
  if [ "$1" = -q ]; then quiet=1; shift; fi
  local name=$1 seconds=$2
  shift 2
  local log="$OUT/gpu-$name.log"
  if [ "$quiet" = 1 ]; then
    timeout -k 10 "$seconds" bash -c '"$@"' "$name" "$@" > "$log" 2>&1
    rc=$?
    [ "$rc" = 0 ] || tail -30 "$log"
  else
    timeout -k 10 "$seconds" bash -c '"$@"' "$name" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
  fi
  STEP_NAMES+=("$name")
  case $rc in
    0) STEP_STATUS[$name]=ok ;;
    124) STEP_STATUS[$name]="TIMED OUT after $seconds s (exit 124; see $log)" ;;
    137) STEP_STATUS[$name]="KILLED (exit 137: out of time after the grace period, or of memory; see $log)" ;;
    *) STEP_STATUS[$name]="FAILED (exit $rc; see $log)" ;;
  esac
  if [ "$rc" != 0 ] && [ "$FIRST_FAILURE" = 0 ]; then FIRST_FAILURE=$rc; fi
  return "$rc"
}

steps_finish() {
  local name
  echo "================ steps ================"
  for name in "${STEP_NAMES[@]}"; do printf '%-7s %s\n' "$name" "${STEP_STATUS[$name]}"; done
  return "$FIRST_FAILURE"
}
