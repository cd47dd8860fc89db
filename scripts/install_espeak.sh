#!/usr/bin/env bash
# Installs the Debian package espeak-ng, which the synthetic speech benchmark uses to make its audio.
# Never fails the setup: when it cannot install, it says so and what to do.
set -u
if command -v espeak-ng >/dev/null 2>&1; then
    echo "espeak-ng: found $(command -v espeak-ng)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
fi
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    echo "espeak-ng: installing with apt-get ..."
    if $SUDO apt-get update -qq >/dev/null 2>&1 && \
       DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq espeak-ng >/dev/null 2>&1; then
        echo "espeak-ng: installed $(command -v espeak-ng)"
        exit 0
    fi
fi
echo "espeak-ng: NOT INSTALLED. The synthetic speech benchmark needs it; everything else works without it."
echo "           Install it yourself (Debian/Ubuntu: 'sudo apt-get install espeak-ng'; macOS: 'brew install espeak-ng')."
exit 0
