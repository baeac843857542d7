#!/bin/sh
# Guest script: loop device on a file, LUKS2 on the loop, ext4 on top.
set -eu
truncate -s 32M /tmp/f.img
loop=$(losetup -f --show /tmp/f.img)
echo "loop device: $loop"
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
	--key-file /key "$loop"
cryptsetup open --key-file /key "$loop" l
mkfs.ext4 -q /dev/mapper/l
mkdir -p /mnt/l
mount -t ext4 /dev/mapper/l /mnt/l
echo hello-from-ext4 >/mnt/l/hello
umount /mnt/l
e2fsck -fn /dev/mapper/l >/dev/null && echo "e2fsck clean"
mount -t ext4 -o ro /dev/mapper/l /mnt/l
cat /mnt/l/hello
umount /mnt/l
cryptsetup close l
losetup -d "$loop"
# cryptsetup can also attach a file itself (it allocates a loop device)
cryptsetup open --key-file /key /tmp/f.img l2
blkid /dev/mapper/l2
cryptsetup close l2
echo "LOOP OK"
