#!/usr/bin/env bash
# The MQTT transport's tests run a real broker: install Debian's mosquitto (and openssl, which makes its test
# certificates) when missing (needs root).
# Without root the tests install nothing and skip, saying why; with it, CI never skips them.
set -u
if { command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; } && command -v openssl >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing Debian package mosquitto (MQTT broker for the tests)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq mosquitto openssl >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq mosquitto openssl >/dev/null 2>&1; } \
    || echo "   could not install mosquitto (continuing; the MQTT tests will skip)"
else
  echo "== not root: skipping apt (install mosquitto yourself, or the MQTT tests skip)"
fi
exit 0
