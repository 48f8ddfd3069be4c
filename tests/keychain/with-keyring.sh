#!/bin/sh
# Runs COMMAND inside a throw-away D-Bus session with a fresh gnome-keyring whose login keyring is
# created and unlocked without a prompt, so the Secret Service tests talk to a real daemon and
# never touch the user's own keyring. Sets SBX_TEST_THROWAWAY_KEYRING for the tests to check.
#
#   tests/keychain/with-keyring.sh build/tests/keychain/test_keychain [doctest options]
set -eu

if [ "$#" -lt 1 ]; then
  echo "usage: $0 COMMAND [ARG...]" >&2
  exit 2
fi
for tool in dbus-run-session gnome-keyring-daemon gdbus; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "$0: $tool is not installed (Debian: dbus, gnome-keyring, libglib2.0-bin)" >&2
    exit 1
  fi
done

scratch=$(mktemp -d "${TMPDIR:-/tmp}/sbx-keyring.XXXXXX")
trap 'rm -rf "$scratch"' EXIT INT TERM
mkdir -p "$scratch/home" "$scratch/data" "$scratch/config" "$scratch/cache" "$scratch/runtime"
chmod 700 "$scratch/runtime"

# gnome-keyring keeps its keyrings under XDG_DATA_HOME and its control socket under
# XDG_RUNTIME_DIR: pointing both (and HOME) at the scratch directory isolates it completely.
# The inner script expands its variables inside the new session, hence the single quotes.
# shellcheck disable=SC2016
HOME=$scratch/home XDG_DATA_HOME=$scratch/data XDG_CONFIG_HOME=$scratch/config \
XDG_CACHE_HOME=$scratch/cache XDG_RUNTIME_DIR=$scratch/runtime \
SBX_TEST_THROWAWAY_KEYRING=1 \
dbus-run-session -- sh -c '
  set -eu
  # A non-empty password: with an empty one gnome-keyring asks a GUI prompter instead.
  keyring_env=$(printf "throwaway" | gnome-keyring-daemon --unlock --components=secrets)
  if [ -n "$keyring_env" ]; then
    set -a
    eval "$keyring_env"
    set +a
  fi
  tries=0
  until gdbus call --session --dest org.freedesktop.DBus --object-path /org/freedesktop/DBus \
      --method org.freedesktop.DBus.NameHasOwner org.freedesktop.secrets 2>/dev/null |
      grep -q true; do
    tries=$((tries + 1))
    if [ "$tries" -gt 100 ]; then
      echo "with-keyring.sh: gnome-keyring-daemon did not take org.freedesktop.secrets" >&2
      exit 1
    fi
    sleep 0.05
  done
  keyring_pid=$(gdbus call --session --dest org.freedesktop.DBus --object-path /org/freedesktop/DBus \
      --method org.freedesktop.DBus.GetConnectionUnixProcessID org.freedesktop.secrets |
      sed -n "s/.*uint32 \([0-9][0-9]*\).*/\1/p")  # "(uint32 12345,)" -> 12345
  status=0
  "$@" || status=$?
  # The daemon would notice the bus going away, but not before dbus-run-session returns.
  kill "$keyring_pid" 2>/dev/null || true
  exit "$status"
' sh "$@"
