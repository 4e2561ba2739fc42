#!/bin/sh
# check_promtool.sh - validate the shipped Prometheus and Grafana files with
# promtool: the scrape config, the alert rules, the rule unit tests, and every
# PromQL expression of the dashboard (parsed as recording rules). The metrics
# page itself is checked by test_metrics: the 0.0.4 text with promtool check
# metrics, the OpenMetrics page with promtool's OpenMetrics parser (promtool
# 2.42's check metrics reads only the 0.0.4 text; see
# promtool_parses_the_openmetrics_page_with_exemplars), and live by
# tests/integration/test_prometheus.py.
#
# A missing promtool or jq is a failure naming the Debian package, not a skip:
# make check must not pass without having checked these files.
set -eu

top=${srcdir:-.}
if [ -f "$top/tests/unit/check_promtool.sh" ]; then :; else top=$(dirname "$0")/../..; fi
for tool in promtool:prometheus jq:jq; do
    if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
        echo "check_promtool: ${tool%%:*} not installed (Debian: apt-get install ${tool#*:})" >&2
        exit 1
    fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

promtool check config --syntax-only "$top/conf/prometheus.yml"
promtool check rules "$top/conf/alerts.yml"
promtool test rules "$top/tests/prometheus/alerts_test.yml"

# One recording rule per dashboard query; promtool parses each expression.
{
    echo "groups:"
    echo "  - name: dashboard"
    echo "    rules:"
    jq -r '[.. | .expr? // empty] | to_entries[]
           | "      - record: dashboard:query_\(.key)\n        expr: \(.value | @json)"' \
        "$top/conf/grafana/akosha.json"
} >"$tmp/dashboard.yml"
promtool check rules "$tmp/dashboard.yml"
echo "check_promtool: all checks passed"
