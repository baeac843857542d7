#!/bin/sh
# Guest script: open an integrity-protected LUKS2 DEV whose data the host has
# corrupted; reading everything must fail with an I/O (integrity) error.
# usage: luks2-tamper.sh DEV
set -eu
cryptsetup open --key-file /key "$1" t
if dd if=/dev/mapper/t of=/dev/null bs=1M 2>/tmp/dd.err; then
	echo "corruption NOT detected"
	cryptsetup close t
	exit 1
fi
sed -n 1p /tmp/dd.err
cryptsetup close t
echo "TAMPER DETECTED"
