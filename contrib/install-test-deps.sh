#!/bin/sh
# System packages the test suite uses beyond PyPI: promtool (Debian's `prometheus`
# package) to check the alerting rules.  Installs it when running as root on a
# Debian-like machine and it is missing; otherwise says why the alert tests will skip.
if command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus) >/dev/null 2>&1 \
        && exit 0
fi
echo "note: promtool not available; the alert-rule tests will be skipped" >&2
exit 0
