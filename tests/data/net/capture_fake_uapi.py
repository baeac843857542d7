# A fake UAPI server: records the first set request on the socket and answers errno=0.
import os, socket, sys
path, out = sys.argv[1], sys.argv[2]
try: os.unlink(path)
except FileNotFoundError: pass
s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    data = b""
    while not data.endswith(b"\n\n"):
        chunk = c.recv(4096)
        if not chunk: break
        data += chunk
    if not data.startswith(b"set=1\n"):
        c.close(); continue   # wg(8) probes the socket by connecting
    open(out, "wb").write(data)
    c.sendall(b"errno=0\n\n"); c.close(); break
os.unlink(path)
