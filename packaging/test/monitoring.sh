#!/usr/bin/env bash
# Checks the monitoring assets under packaging/monitoring:
#   - the alert rules pass `promtool check rules` and their unit tests
#     (`promtool test rules`);
#   - the example Prometheus and VictoriaMetrics scrape configs pass
#     `promtool check config`;
#   - every PromQL expression of the Grafana dashboard parses (promtool checks
#     them as recording rules, Grafana's variables replaced);
#   - every k3sfleet_* metric the rules and the dashboard use is one the agent
#     or the coordinator defines (a name in their source), so a renamed metric
#     fails here instead of silently emptying a panel.
# Needs promtool (apt prometheus) and jq. Takes a few seconds.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
monitoring="$repo_root/packaging/monitoring"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

step() { printf '== %s\n' "$*"; }

step "promtool check rules + test rules"
promtool check rules "$monitoring/prometheus/k3sfleet-alerts.yml"
(cd "$monitoring/prometheus" && promtool test rules k3sfleet-alerts.test.yml)

step "promtool check config (Prometheus, VictoriaMetrics)"
# The examples name a file_sd file and the rules by relative path: check them
# from a copy that has both.
cp "$monitoring/prometheus/k3sfleet-alerts.yml" "$work/"
cp "$monitoring/prometheus/prometheus.yml" "$work/prometheus.yml"
cp "$monitoring/victoriametrics/scrape.yml" "$work/victoriametrics.yml"
(cd "$work" && promtool check config prometheus.yml && promtool check config victoriametrics.yml)

step "dashboard expressions parse"
dashboard="$monitoring/grafana/k3sfleet-fleet.json"
jq -r '.. | objects | select(has("expr")) | .expr' "$dashboard" >"$work/exprs"
count=$(wc -l <"$work/exprs")
[[ $count -ge 10 ]] || { echo "expected at least 10 expressions in $dashboard, found $count" >&2; exit 1; }
{
    echo "groups:"
    echo "  - name: dashboard"
    echo "    rules:"
    n=0
    while IFS= read -r expr; do
        n=$((n + 1))
        expr="${expr//\$__rate_interval/5m}"
        expr="${expr//\$instance/.*}"
        expr="${expr//\$rollout/.*}"
        printf '      - record: dashboard_expr_%d\n        expr: %s\n' "$n" "$(jq -Rn --arg e "$expr" '$e')"
    done <"$work/exprs"
} >"$work/dashboard-rules.yml"
promtool check rules "$work/dashboard-rules.yml"

step "every metric used is defined by the agent or the coordinator"
grep -ohE 'k3sfleet_[a-z0-9_]+' "$monitoring/prometheus/k3sfleet-alerts.yml" "$dashboard" \
    | sed -E 's/_(bucket|sum|count)$//' | sort -u >"$work/used"
missing=()
while IFS= read -r metric; do
    # Counters may be registered without `_total` (prometheus-client adds it).
    grep -rqF -e "\"$metric\"" -e "\"${metric%_total}\"" "$repo_root/agent/src" "$repo_root/coordinator/src" \
        || missing+=("$metric")
done <"$work/used"
if ((${#missing[@]})); then
    echo "metrics used by the rules or the dashboard but defined nowhere in agent/src or coordinator/src:" >&2
    printf '  %s\n' "${missing[@]}" >&2
    exit 1
fi
echo "$(wc -l <"$work/used") metrics, all defined"
echo "monitoring assets: ok"
