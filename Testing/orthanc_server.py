"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) on 127.0.0.1 for the PACS tests.

Each server gets free ports, its own storage folder and a generated configuration with
authentication on (one test user) and, optionally, a Lua script. Where Orthanc or its DICOMweb
plugin is not installed, :func:`orthanc_missing` says why, so the tests skip with that reason
(scripts/setup.sh installs both where it has root).
"""

import json
import os
import select
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time

import requests


def relay(client, upstream, watch=None, idle=5.0):
    """Copy bytes both ways between two sockets until either closes or ``idle`` seconds pass quietly.

    ``watch(data)``, if given, sees each chunk the client sends before it is passed on; it returns
    False to end the relay there (the chunk is not passed on). Used by the test proxies in front of Orthanc.
    """
    ends = {client: upstream, upstream: client}
    while True:
        ready, _, _ = select.select(list(ends), [], [], idle)
        if not ready:
            return
        for end in ready:
            data = end.recv(65536)
            if not data:
                return
            if end is client and watch is not None and watch(data) is False:
                return
            ends[end].sendall(data)

USER, PASSWORD = "lrs-test", "Orthanc-Pw-7f3c9e21"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")


def _binary():
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if os.access(p, os.X_OK)), None)


def _plugin():
    for d in PLUGIN_DIRS:
        p = os.path.join(d, "libOrthancDicomWeb.so")
        if os.path.isfile(p):
            return p
    return None


def orthanc_missing():
    """Why no Orthanc can be started here, or None."""
    if not _binary():
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb, or run scripts/setup.sh as root)"
    if not _plugin():
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc(object):
    """One Orthanc process; ``url`` is its DICOMweb root, ``rest`` its native REST API."""

    def __init__(self, folder, lua=None):
        """``lua``: the text of a Lua script Orthanc runs (e.g. a ReceivedInstanceFilter)."""
        self.folder = str(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.port = _free_port()
        config = {
            "Name": "LowResSegTest", "StorageDirectory": os.path.join(self.folder, "db"),
            "IndexDirectory": os.path.join(self.folder, "db"), "HttpPort": self.port,
            "DicomServerEnabled": False, "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD}, "Plugins": [_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "HttpTimeout": 10, "StableAge": 1, "SaveJobs": False,
        }
        if lua:
            script = os.path.join(self.folder, "filter.lua")
            with open(script, "w") as f:
                f.write(lua)
            config["LuaScripts"] = [script]
        self.config = os.path.join(self.folder, "orthanc.json")
        with open(self.config, "w") as f:
            json.dump(config, f, indent=1)
        self.rest = "http://127.0.0.1:%d" % self.port
        self.url = self.rest + "/dicom-web"
        self.log = os.path.join(self.folder, "orthanc.log")
        self.proc = None

    def start(self, wait=20.0):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([_binary(), self.config], stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.folder)
        deadline = time.time() + wait
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("Orthanc exited with %d; its log: %s" % (self.proc.returncode, self.tail()))
            try:
                if requests.get(self.rest + "/system", auth=(USER, PASSWORD), timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("Orthanc did not answer within %.0f s; its log: %s" % (wait, self.tail()))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def tail(self, n=2000):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def upload(self, paths):
        """Store files through the native REST API (not the code under test)."""
        for p in paths:
            with open(str(p), "rb") as f:
                r = requests.post(self.rest + "/instances", data=f.read(), auth=(USER, PASSWORD), timeout=10)
            r.raise_for_status()

    def get(self, path):
        r = requests.get(self.rest + path, auth=(USER, PASSWORD), timeout=10)
        r.raise_for_status()
        return r.json() if "json" in r.headers.get("Content-Type", "") else r.content

    def instances_by_modality(self):
        """{Modality: [instance MainDicomTags + parent uids]} of everything stored."""
        out = {}
        for iid in self.get("/instances"):
            tags = self.get("/instances/%s/simplified-tags" % iid)
            out.setdefault(tags.get("Modality"), []).append(dict(tags, _id=iid))
        return out


class TlsProxy(object):
    """HTTPS on 127.0.0.1 in front of ``port``, with the certificate ``cert`` (and its ``key``).

    Debian's Orthanc 1.10 crashes on an HTTPS connection (its civetweb with OpenSSL 3), so TLS
    is terminated here, as an nginx in front of a PACS does; ``url`` is the DICOMweb root.
    """

    def __init__(self, cert, key, port):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    client = context.wrap_socket(self.request, server_side=True)
                except (ssl.SSLError, OSError):
                    return  # the client refused our certificate: what the tests expect of it
                with client, socket.create_connection(("127.0.0.1", port)) as upstream:
                    relay(client, upstream)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Pipe)
        self.server.daemon_threads = True
        self.url = "https://127.0.0.1:%d/dicom-web" % self.server.server_address[1]
        self.host = "127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
