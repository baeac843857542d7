#!/bin/sh
# Guest script: open DEV, read back as many bytes as /pattern has, compare.
# usage: luks2-read.sh DEV
set -eu
dev=$1
cryptsetup open --key-file /key "$dev" t
cryptsetup status t | sed -n 's/^ *\(type\|cipher\|keysize\|sector size\|integrity\|integrity keysize\): */\1: /p'
n=$(wc -c </pattern)
got=$(dd if=/dev/mapper/t bs=4096 count=$((n / 4096)) 2>/dev/null | sha256sum | cut -d' ' -f1)
want=$(sha256sum </pattern | cut -d' ' -f1)
# read the whole device once, so dm-integrity verifies every tag
dd if=/dev/mapper/t of=/dev/null bs=1M 2>/dev/null
cryptsetup close t
echo "read sha256=$got"
if [ "$got" != "$want" ]; then
	echo "PATTERN MISMATCH (want $want)"
	exit 1
fi
echo "PATTERN OK"
