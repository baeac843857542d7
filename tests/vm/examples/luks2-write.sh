#!/bin/sh
# Guest script: luksFormat DEV with the given extra options, open it, write
# /pattern at the start of the mapping, close.  usage: luks2-write.sh DEV [luksFormat options...]
set -eu
dev=$1; shift
t() { cut -d' ' -f1 /proc/uptime; }
t0=$(t)
cryptsetup luksFormat -q --type luks2 --cipher aes-xts-plain64 --key-size 512 \
	--sector-size 4096 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
	--key-file /key "$@" "$dev"
t1=$(t)
cryptsetup open --key-file /key "$dev" t
dmsetup table t | sed 's/ [0-9a-f]\{64,\} / <key> /'
dd if=/pattern of=/dev/mapper/t bs=4096 conv=fsync 2>/dev/null
cryptsetup close t
t2=$(t)
echo "written $(wc -c </pattern) bytes sha256=$(sha256sum </pattern | cut -d' ' -f1)"
echo "timing: luksFormat $(awk "BEGIN{print $t1-$t0}")s open+write+close $(awk "BEGIN{print $t2-$t1}")s"
