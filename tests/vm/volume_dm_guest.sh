#!/bin/sh
# Guest half of tests/vm/volume_dm_test: runs inside the VM, where device-mapper exists.
#   /dev/vda  a volume the host formatted and wrote through the userspace (FUSE) path
#   /dev/vdb  blank: formatted here, written through dm-crypt, read by the host through FUSE
#   /dev/vdc  blank: formatted here with --integrity
# /ms.json is the cluster's master secret; /p1 /p2 /p3 /p4 are data files from the host.
set -eu
kw() { /usr/local/bin/keywarden "$@"; }
sum() { sha256sum | cut -d' ' -f1; }
blocks() { echo $(( $(wc -c <"$1") / 4096 )); }

# 1. The host's userspace writes, read back through the kernel's dm-crypt.
kw volume open /dev/vda --name a --master-secret /ms.json
kw volume status a | grep '^mapped '
echo "a-read $(dd if=/dev/mapper/a bs=4096 count=$(blocks /p1) 2>/dev/null | sum)"
# The kernel writes p2 at 1 MiB; the host reads it through FUSE.
dd if=/p2 of=/dev/mapper/a bs=4096 seek=256 conv=fsync 2>/dev/null
dmsetup table a | awk '{print "a-table", $4, $9, $10, $11}'
kw volume close a
[ ! -e /dev/mapper/a ] && echo "a-closed"

# 2. A volume formatted here; the kernel writes p3 for the host.
kw volume format /dev/vdb --master-secret /ms.json --pbkdf pbkdf2 --pbkdf-iterations 1000 \
  | grep -E '^(type|sector-size)'
kw volume open /dev/vdb --name b --master-secret /ms.json >/dev/null
dd if=/p3 of=/dev/mapper/b bs=4096 conv=fsync 2>/dev/null
kw volume close b

# 3. Integrity (dm-integrity hmac(sha256)): format, write, close, reopen, read back.
kw volume format /dev/vdc --integrity --master-secret /ms.json --pbkdf pbkdf2 \
  --pbkdf-iterations 1000 | grep -E '^(integrity|volume-key-bits|initialized)'
kw volume open /dev/vdc --name c --master-secret /ms.json >/dev/null
dd if=/p4 of=/dev/mapper/c bs=4096 conv=fsync 2>/dev/null
kw volume close c
kw volume open /dev/vdc --name c --master-secret /ms.json >/dev/null
echo "c-read $(dd if=/dev/mapper/c bs=4096 count=$(blocks /p4) 2>/dev/null | sum)"
kw volume close c

# 4. Refusals through dm as well: the wrong cluster's key, an existing mapping name.
if kw volume open /dev/vdb --name w --master-secret /other.json 2>/tmp/err; then
  echo "wrong-key-accepted"
else
  grep -o 'does not open keyslot 0' /tmp/err | sed 's/^/w-refused: /'
fi
kw volume open /dev/vdb --name b --master-secret /ms.json >/dev/null
if kw volume open /dev/vda --name b --master-secret /ms.json 2>/tmp/err; then
  echo "duplicate-name-accepted"
else
  echo "b-duplicate-refused"
fi
kw volume close b
echo "guest-done"
