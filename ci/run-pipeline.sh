#!/usr/bin/env bash
# trtbuild from any CI (GitLab, Jenkins, Buildkite, the GitHub workflows in ci/github/workflows):
#
#   ci/run-pipeline.sh validate                 every recipe under recipes/
#   ci/run-pipeline.sh plan REF [--matrix]      recipes changed since REF; --matrix: GitHub matrix JSON on stdout
#   ci/run-pipeline.sh explain REF DIR          plan --explain of each recipe changed since REF into DIR/<name>
#   ci/run-pipeline.sh run RECIPE               fetch .. release; gate reports into $CI_SUMMARY_FILE
#   ci/run-pipeline.sh sync FILE [--dry-run]    reconcile a Triton repository to deploy/<env>.yaml
#
# Environment: TRTBUILD (default: trtbuild), PYTHON (default: python3, for the summaries),
# TRTBUILD_ARTIFACTS (default: artifacts), CI_SUMMARY_FILE (Markdown appended for humans; default
# $GITHUB_STEP_SUMMARY when set). Endpoints and credentials (MLFLOW_TRACKING_URI, TRTBUILD_STORE,
# AWS_*, HF_TOKEN) come from the CI's secret store as environment variables, never arguments.
# Exit codes are trtbuild's: 0 ok, 1 error, 2 usage, 3 a gate failed.
set -euo pipefail

TRTBUILD=${TRTBUILD:-trtbuild}
PYTHON=${PYTHON:-python3}
ARTIFACTS=${TRTBUILD_ARTIFACTS:-artifacts}
SUMMARY=${CI_SUMMARY_FILE:-${GITHUB_STEP_SUMMARY:-/dev/null}}

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

gate_reports() {  # run summary JSON on stdin -> the Markdown gate reports it produced
  "$PYTHON" -c '
import json, sys
run = json.load(sys.stdin)
for s in run.get("stages", []):
    md = (s.get("outputs") or {}).get("markdown")
    if md:
        print(md)
'
}

cmd=${1:-}
[ -n "$cmd" ] || usage
shift
case "$cmd" in
  validate)
    "$TRTBUILD" validate recipes/*.yaml
    ;;
  plan)
    ref=${1:-}
    [ -n "$ref" ] || usage
    matrix=0
    [ "${2:-}" = "--matrix" ] && matrix=1
    # the table for humans (also when the plan fails: it lists the problems), then the result
    "$TRTBUILD" plan --changed-since "$ref" --format markdown >> "$SUMMARY" 2>/dev/null || true
    if [ "$matrix" = 1 ]; then
      "$TRTBUILD" plan --changed-since "$ref" --format github-matrix
    else
      "$TRTBUILD" plan --changed-since "$ref" --json
    fi
    ;;
  explain)
    ref=${1:-}
    dir=${2:-}
    { [ -n "$ref" ] && [ -n "$dir" ]; } || usage
    mkdir -p "$dir"
    rc=0
    while IFS=$'\t' read -r recipe name; do
      [ -n "$recipe" ] || continue
      out=0
      "$TRTBUILD" plan "$recipe" --explain "$dir/$name" > /dev/null 2> "$dir/$name.log" || out=$?
      [ "$out" = 0 ] || rc=$out
      {
        echo "## \`$recipe\`: plan --explain (exit $out)"
        echo '```'
        cat "$dir/$name.log"
        echo '```'
      } >> "$SUMMARY"
    done < <("$TRTBUILD" plan --changed-since "$ref" --json | "$PYTHON" -c '
import json, sys
for p in json.load(sys.stdin).get("planned", []):
    print(p["recipe"] + "\t" + p["name"])
')
    exit "$rc"
    ;;
  run)
    recipe=${1:-}
    [ -n "$recipe" ] || usage
    mkdir -p "$ARTIFACTS"
    rc=0
    "$TRTBUILD" run "$recipe" --json --artifacts "$ARTIFACTS" > "$ARTIFACTS/run-summary.json" || rc=$?
    # the gate reports are the review material: show them whether the run passed or not
    {
      echo "## trtbuild run \`$recipe\` (exit $rc)"
      if [ -s "$ARTIFACTS/run-summary.json" ]; then
        mkdir -p "$ARTIFACTS/reports"
        while IFS= read -r md; do
          [ -f "$md" ] || continue
          cp "$md" "$ARTIFACTS/reports/"
          echo; cat "$md"
        done < <(gate_reports < "$ARTIFACTS/run-summary.json")
      fi
    } >> "$SUMMARY"
    exit "$rc"
    ;;
  sync)
    file=${1:-}
    [ -n "$file" ] || usage
    shift
    "$TRTBUILD" sync "$file" "$@"
    ;;
  *)
    echo "ci: unknown command '$cmd'" >&2
    usage
    ;;
esac
