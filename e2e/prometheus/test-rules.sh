#!/usr/bin/env bash
# The alert rules, with Prometheus's own tool: `promtool check rules` (syntax, PromQL,
# templates) and `promtool test rules` (the unit tests in files/prometheus/tests/: every
# alert firing, with its labels and annotations exact, and silent just under its
# threshold and before its `for`); then check_rules.py: the conventions promtool does not
# know (names, severities, runbook_url), a runbook with its four sections for every
# alert, and tests both ways for every alert. No cluster, no network; a few seconds.
#
# PROMTOOL and PYTHON override the tools (default: promtool on PATH, and the Python
# environment of e2e/install-deps.sh, which has PyYAML).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
rules_dir="$root/charts/mail-incident-operator/files/prometheus"
cache="${E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mail-incident-operator}"
promtool="${PROMTOOL:-promtool}"
python="${PYTHON:-$cache/python/bin/python}"

die() { printf '[test-rules] error: %s\n' "$*" >&2; exit 1; }

command -v "$promtool" >/dev/null ||
  die "promtool not found: apt-get install prometheus (Debian's package installs /usr/bin/promtool)"
[ -x "$python" ] || command -v "$python" >/dev/null ||
  die "$python not found: e2e/install-deps.sh creates it (apt-get install python3-venv), or set PYTHON to a Python with PyYAML"

tests=("$rules_dir"/tests/*.yaml)
[ -e "${tests[0]}" ] || die "no unit tests in $rules_dir/tests"

"$promtool" check rules "$rules_dir/mail-incident-operator.rules.yaml"
# promtool resolves each test file's rule_files against the file's own directory.
"$promtool" test rules "${tests[@]}"
"$python" "$here/check_rules.py" "$root"
