#!/usr/bin/env python3
"""hack/process-kubelet.py - a test "kubelet" that runs Pods as local processes.

Usage:
  hack/process-kubelet.py --log-dir DIR [--bin-dir DIR]... [--namespace NS] [--selector SEL]
                          [--max-running N] [--poll SECONDS] [--work-dir DIR] [--keep-workdirs]
                          [--image-entrypoint GLOB=CMD]... [--pass-env NAME]... [--env NAME=VALUE]...
                          [--kubeconfig FILE] [--kubectl PATH] [--kill-grace SECONDS] [--verbose]

Why: the test control plane (hack/kube-up.sh) has a real API server and a real Job controller
but no scheduler and no kubelet, so Pods stay Pending. This script plays the kubelet: it polls
the Pods (all namespaces, or one), and runs each Pending Pod's first container as a local
process, then reports it through the Pod status the way a kubelet does, so the Job controller
(and the operator watching the Jobs) see real Running/Succeeded/Failed pods. It talks to the API
server only through kubectl, with the given kubeconfig (default: $KUBECONFIG).

For each Pending Pod it has not started yet, up to --max-running at a time (oldest first):
  * env: envFrom (configMapRef, secretRef, with prefix), then env (value with $(VAR) expansion;
    valueFrom configMapKeyRef, secretKeyRef, fieldRef metadata.name/namespace/uid/labels/
    annotations, spec.nodeName/serviceAccountName, status.podIP/hostIP). A missing ConfigMap,
    Secret or key that is not optional keeps the Pod Pending (CreateContainerConfigError), as a
    kubelet does, and is retried.
  * volumes: configMap, secret, projected (configMap/secret sources), downwardAPI and emptyDir
    are materialised in a per-pod temp dir; hostPath is used as is. Any argument, env value or
    `--flag=value` value that starts with a volumeMount's mountPath is rewritten to the local
    dir (so `--plan /etc/mira/plan.json` reads the ConfigMap's file).
  * command: the container's command (or, with none, the image's entrypoint: the first
    --image-entrypoint whose glob matches the image, else the image name's last path part
    without tag, e.g. `example.org/mira/scorer-runner:0.1.0` -> `scorer-runner`) plus args.
    The executable's basename is looked up in each --bin-dir, then in PATH.
  * process: cwd is a per-pod temp dir; env is a small base (PATH with the --bin-dirs first,
    HOME, HOSTNAME, TMPDIR: the /tmp mount if the Pod has one, LANG), the --pass-env variables
    taken from this script's environment, MIRA_WORKER_ID=<pod name>, the Pod's env, then the
    --env overrides. stdout and stderr go to <log-dir>/<namespace>_<pod>.log.
  * status: Running (startTime, conditions, containerStatuses[0].state.running) once started;
    Succeeded/Failed when it exits, with containerStatuses[0].state.terminated {exitCode,
    reason Completed/Error, startedAt, finishedAt, and on failure message = the last 20 lines
    of stderr, at most 4 KiB}. An executable that cannot be found fails the Pod with reason
    StartError (exit code 128).
A Pod deleted (or marked for deletion) while its process runs gets its process group killed
(TERM, then KILL after --kill-grace seconds). A Pod left Running by an earlier instance of this
script (containerID process://...) is reported Failed (exit code 137): its process is lost. API errors are logged and retried on the next
poll; the script runs until killed. SIGTERM/SIGINT: kill all children, then exit 0.

With --serve-logs it also serves `kubectl logs` for its Pods, as a kubelet does: it registers a
Node (--node-name) whose kubelet endpoint is an HTTPS server on a free loopback port, binds each
Pod it starts to that Node (pods/binding, what a scheduler does), and answers the API server's
GET /containerLogs/<namespace>/<pod>/<container> from the Pod's log file (tailLines honoured,
follow not). The API server checks no kubelet serving certificate unless told a CA, so a
self-signed one does. The Node is deleted at exit.

Limits: one container per Pod (init and sidecar containers are ignored), restartPolicy is
treated as Never (no in-place restarts), no probes, no resource limits, no real isolation: the
processes run as this user on this machine. Only for tests.
"""

import argparse
import base64
import collections
import fnmatch
import http.server
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

STDERR_LINES = 20
MESSAGE_BYTES = 4096
CONFIG_RETRY_SECONDS = 2.0
KUBECTL_TIMEOUT = 30


def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Log:
    """The script's own log on stderr; repeated identical errors are printed at most every 10 s."""

    def __init__(self, verbose):
        self.verbose = verbose
        self.last = {}

    def _emit(self, level, msg):
        sys.stderr.write("%s process-kubelet %s %s\n" % (now_rfc3339(), level, msg))
        sys.stderr.flush()

    def info(self, msg):
        self._emit("INFO", msg)

    def debug(self, msg):
        if self.verbose:
            self._emit("DEBUG", msg)

    def error(self, msg, key=None):
        key = key or msg
        t = time.monotonic()
        if t - self.last.get(key, -1e9) >= 10.0:
            self.last[key] = t
            self._emit("ERROR", msg)


class ApiError(Exception):
    pass


class NotFound(ApiError):
    pass


class Kube:
    """The API server, through kubectl."""

    def __init__(self, kubectl, kubeconfig):
        self.base = [kubectl, "--request-timeout=10s"]
        if kubeconfig:
            self.base.append("--kubeconfig=" + kubeconfig)

    def _run(self, args, what):
        try:
            p = subprocess.run(self.base + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=KUBECTL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ApiError("%s: kubectl timed out after %ds" % (what, KUBECTL_TIMEOUT))
        except OSError as e:
            raise ApiError("%s: cannot run kubectl: %s" % (what, e))
        if p.returncode != 0:
            # kubectl's last line says what failed (client-go's retries log above it)
            lines = [ln for ln in p.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
            err = lines[-1].strip() if lines else ""
            if "(NotFound)" in err:
                raise NotFound("%s: %s" % (what, err))
            raise ApiError("%s: %s" % (what, err or "kubectl exited %d" % p.returncode))
        return p.stdout

    def _json(self, args, what):
        out = self._run(args + ["-o", "json"], what)
        try:
            return json.loads(out)
        except ValueError as e:
            raise ApiError("%s: kubectl printed no JSON: %s" % (what, e))

    def list_pods(self, namespace, selector):
        args = ["get", "pods"] + (["-n", namespace] if namespace else ["--all-namespaces"])
        if selector:
            args += ["-l", selector]
        return self._json(args, "listing pods").get("items") or []

    def get(self, kind, namespace, name):
        return self._json(["get", kind, name, "-n", namespace], "reading %s %s/%s" % (kind, namespace, name))

    def patch_status(self, namespace, name, status):
        body = json.dumps({"status": status})
        self._run(["patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", body],
                  "patching status of pod %s/%s" % (namespace, name))

    def create_or_apply(self, verb, obj, what):
        """`kubectl create` or `kubectl apply` of one object, written to a temp file."""
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(obj, f)
            f.flush()
            self._run([verb, "-f", f.name], what)

    def patch_node_status(self, name, status):
        self._run(["patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status})],
                  "patching status of node %s" % name)

    def delete_node(self, name):
        self._run(["delete", "node", name, "--ignore-not-found", "--wait=false"], "deleting node %s" % name)

    def force_delete_pod(self, namespace, name):
        self._run(["delete", "pod", name, "-n", namespace, "--grace-period=0", "--force", "--wait=false",
                   "--ignore-not-found"], "deleting pod %s/%s" % (namespace, name))


# ---------------------------------------------------------------- logs through the API server

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")


class LogServer:
    """The kubelet's containerLogs endpoint over HTTPS on a free loopback port, from the per-pod
    log files (see the module's doc)."""

    def __init__(self, log_dir, tmp_dir, log):
        cert, key = os.path.join(tmp_dir, "kubelet.crt"), os.path.join(tmp_dir, "kubelet.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=process-kubelet", "-keyout", key, "-out", cert],
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                if len(parts) != 4 or parts[0] != "containerLogs" or not all(NAME_RE.match(p) for p in parts[1:3]):
                    return self.answer(404, b"not a containerLogs path\n")
                try:
                    with open(os.path.join(log_dir, "%s_%s.log" % (parts[1], parts[2])), "rb") as f:
                        body = f.read()
                except FileNotFoundError:
                    return self.answer(404, b"no log of this pod here\n")
                tail = urllib.parse.parse_qs(url.query).get("tailLines")
                if tail and tail[0].isdigit():
                    lines = body.split(b"\n")
                    lines = [line + b"\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
                    body = b"".join(lines[len(lines) - int(tail[0]):]) if int(tail[0]) < len(lines) else body
                self.answer(200, body)

            def answer(self, code, body):
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):
                log.debug("log server: " + fmt % args)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


class ConfigError(Exception):
    """The Pod cannot start yet (a referenced ConfigMap/Secret/key is missing): retried."""


class StartError(Exception):
    """The Pod's container cannot start at all (no executable): the Pod fails."""


# ---------------------------------------------------------------- pod spec resolution

def expand(value, env):
    """Kubernetes' $(VAR) expansion: $(NAME) -> value when NAME is defined, $$ -> $."""
    out, i, n = [], 0, len(value)
    while i < n:
        c = value[i]
        if c == "$" and i + 1 < n:
            nxt = value[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                j = value.find(")", i + 2)
                if j != -1:
                    name = value[i + 2:j]
                    out.append(env[name] if name in env else value[i:j + 1])
                    i = j + 1
                    continue
        out.append(c)
        i += 1
    return "".join(out)


class Resolver:
    """Reads the ConfigMaps and Secrets a Pod refers to (each once per start attempt)."""

    def __init__(self, kube, namespace):
        self.kube = kube
        self.namespace = namespace
        self.cache = {}

    def _object(self, kind, name, optional):
        key = (kind, name)
        if key not in self.cache:
            try:
                self.cache[key] = self.kube.get(kind, self.namespace, name)
            except NotFound:
                self.cache[key] = None
        obj = self.cache[key]
        if obj is None and not optional:
            raise ConfigError("%s %s/%s not found" % (kind, self.namespace, name))
        return obj

    def data(self, kind, name, optional):
        """A ConfigMap's or Secret's entries as bytes, or None when it is optional and missing."""
        obj = self._object(kind, name, optional)
        if obj is None:
            return None
        entries = {}
        if kind == "configmap":
            for k, v in (obj.get("data") or {}).items():
                entries[k] = v.encode("utf-8")
            for k, v in (obj.get("binaryData") or {}).items():
                entries[k] = base64.b64decode(v)
        else:
            for k, v in (obj.get("data") or {}).items():
                entries[k] = base64.b64decode(v)
            for k, v in (obj.get("stringData") or {}).items():
                entries[k] = v.encode("utf-8")
        return entries

    def ref_data(self, kind, ref, name_key="name"):
        """data() of the object that ref names (an envFrom or keyRef reference, a configMap or
        secret volume, a projected source: its name, or secretName, and optional)."""
        return self.data(kind, ref.get(name_key, ""), bool(ref.get("optional")))

    def key(self, kind, ref):
        optional = bool(ref.get("optional"))
        entries = self.ref_data(kind, ref)
        if entries is None:
            return None
        if ref.get("key") not in entries:
            if optional:
                return None
            raise ConfigError("key %r not found in %s %s/%s" % (ref.get("key"), kind, self.namespace, ref.get("name")))
        return entries[ref["key"]].decode("utf-8", "replace")


def field_value(pod, path, node_name):
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName") or node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": "127.0.0.1",
        "status.podIPs": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    if path in simple:
        return simple[path]
    m = re.match(r"^metadata\.(labels|annotations)\['([^']*)'\]$", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    if path in ("metadata.labels", "metadata.annotations"):
        items = sorted((meta.get(path.split(".")[1]) or {}).items())
        return "\n".join('%s="%s"' % (k, v) for k, v in items)
    raise ConfigError("unsupported fieldRef %r" % path)


def write_file(root, rel, content, mode):
    rel = os.path.normpath(rel)
    if rel.startswith("..") or os.path.isabs(rel):
        raise ConfigError("volume item path %r escapes the volume" % rel)
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    os.chmod(path, mode if mode is not None else 0o644)


def write_entries(root, entries, items, default_mode, what):
    if entries is None:
        return
    if items:
        for item in items:
            if item.get("key") not in entries:
                raise ConfigError("key %r not found in %s" % (item.get("key"), what))
            write_file(root, item.get("path") or item["key"], entries[item["key"]], item.get("mode", default_mode))
    else:
        for k, v in entries.items():
            write_file(root, k, v, default_mode)


def write_object(root, resolver, kind, src, name_key, default_mode):
    """Writes under root the entries (src's items, or all) of the ConfigMap or Secret that src, a
    configMap or secret volume or projected source, names by name_key."""
    entries = resolver.ref_data(kind, src, name_key)
    write_entries(root, entries, src.get("items"), default_mode,
                  "%s %s/%s" % (kind, resolver.namespace, src.get(name_key)))


def materialise_volume(vol, root, pod, resolver, node_name, log):
    """Creates a volume's files under root (or returns another local dir to use instead)."""
    ns = resolver.namespace
    os.makedirs(root, exist_ok=True)
    if "configMap" in vol:
        write_object(root, resolver, "configmap", vol["configMap"], "name", vol["configMap"].get("defaultMode"))
    elif "secret" in vol:
        write_object(root, resolver, "secret", vol["secret"], "secretName", vol["secret"].get("defaultMode"))
    elif "projected" in vol:
        src = vol["projected"]
        for s in src.get("sources") or []:
            if "configMap" in s:
                write_object(root, resolver, "configmap", s["configMap"], "name", src.get("defaultMode"))
            elif "secret" in s:
                write_object(root, resolver, "secret", s["secret"], "name", src.get("defaultMode"))
            elif "downwardAPI" in s:
                materialise_downward(s["downwardAPI"].get("items"), root, pod, node_name, src.get("defaultMode"))
            else:
                log.info("pod %s/%s: projected source %s is not supported; skipped" % (ns, pod["metadata"]["name"], sorted(s)))
    elif "downwardAPI" in vol:
        src = vol["downwardAPI"]
        materialise_downward(src.get("items"), root, pod, node_name, src.get("defaultMode"))
    elif "hostPath" in vol:
        return vol["hostPath"].get("path") or root
    elif "emptyDir" not in vol:
        log.info("pod %s/%s: volume %s of an unsupported type: an empty dir stands in for it"
                 % (ns, pod["metadata"]["name"], vol.get("name")))
    return root


def materialise_downward(items, root, pod, node_name, default_mode):
    for item in items or []:
        if "fieldRef" in item:
            value = field_value(pod, item["fieldRef"].get("fieldPath", ""), node_name)
            write_file(root, item["path"], value.encode("utf-8"), item.get("mode", default_mode))


class Mounts:
    """Maps a container's mountPaths to local directories."""

    def __init__(self):
        self.pairs = []   # (mountPath without trailing slash, local dir), longest first

    def add(self, mount_path, local):
        mp = mount_path.rstrip("/")
        if mp:   # a mount at / cannot be told apart from any other absolute path
            self.pairs.append((mp, local))
            self.pairs.sort(key=lambda p: len(p[0]), reverse=True)

    def local(self, mount_path):
        mp = mount_path.rstrip("/")
        for m, local in self.pairs:
            if m == mp:
                return local
        return None

    def rewrite_path(self, s):
        for mp, local in self.pairs:
            if s == mp or s.startswith(mp + "/"):
                return local + s[len(mp):]
        return None

    def rewrite(self, s):
        """An argument or env value with a mounted path rewritten; `--flag=/path` too."""
        r = self.rewrite_path(s)
        if r is not None:
            return r
        if s.startswith("-") and "=" in s:
            flag, _, value = s.partition("=")
            r = self.rewrite_path(value)
            if r is not None:
                return flag + "=" + r
        return s


class Launch:
    """Everything needed to start a Pod's container as a process."""

    def __init__(self, argv, env, cwd, container, image):
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.container = container
        self.image = image


def image_entrypoint(image, rules):
    for glob, cmd in rules:
        if fnmatch.fnmatchcase(image, glob):
            return cmd
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def find_executable(name, bin_dirs):
    base = os.path.basename(name)
    for d in bin_dirs:
        cand = os.path.join(d, base)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return os.path.abspath(cand)
    found = shutil.which(base)
    if found:
        return found
    if os.path.isabs(name) and os.path.isfile(name) and os.access(name, os.X_OK):
        return name
    return None


def resolve(pod, kube, opts, poddir, log):
    """Builds the Launch for a Pod, materialising its volumes under poddir."""
    meta = pod["metadata"]
    ns, name = meta["namespace"], meta["name"]
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    if not containers:
        raise StartError("the pod has no containers")
    c = containers[0]
    if len(containers) > 1 or spec.get("initContainers"):
        log.info("pod %s/%s: only the first container (%s) runs" % (ns, name, c.get("name")))
    resolver = Resolver(kube, ns)

    # volumes
    vol_dirs = {}
    for vol in spec.get("volumes") or []:
        root = os.path.join(poddir, "volumes", vol["name"])
        vol_dirs[vol["name"]] = materialise_volume(vol, root, pod, resolver, opts.node_name, log)
    mounts = Mounts()
    for m in c.get("volumeMounts") or []:
        local = vol_dirs.get(m.get("name"))
        if local is None:
            raise ConfigError("volumeMount %r names no volume of the pod" % m.get("name"))
        if m.get("subPath"):
            local = os.path.join(local, m["subPath"])
            if not os.path.exists(local):
                os.makedirs(local, exist_ok=True)
        mounts.add(m["mountPath"], local)

    # the Pod's own environment, in Kubernetes' order: envFrom, then env
    penv = {}
    for src in c.get("envFrom") or []:
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            entries = resolver.ref_data("configmap", src["configMapRef"])
        elif "secretRef" in src:
            entries = resolver.ref_data("secret", src["secretRef"])
        else:
            continue
        for k, v in (entries or {}).items():
            penv[prefix + k] = v.decode("utf-8", "replace")
    for e in c.get("env") or []:
        n = e["name"]
        if "valueFrom" not in e:
            penv[n] = expand(e.get("value", ""), penv)
            continue
        vf = e["valueFrom"]
        if "configMapKeyRef" in vf:
            v = resolver.key("configmap", vf["configMapKeyRef"])
        elif "secretKeyRef" in vf:
            v = resolver.key("secret", vf["secretKeyRef"])
        elif "fieldRef" in vf:
            v = field_value(pod, vf["fieldRef"].get("fieldPath", ""), opts.node_name)
        else:
            log.info("pod %s/%s: env %s: unsupported valueFrom %s; left unset" % (ns, name, n, sorted(vf)))
            v = None
        if v is not None:
            penv[n] = v

    # command line
    command = list(c.get("command") or [])
    args = list(c.get("args") or [])
    image = c.get("image", "")
    if not command:
        command = [image_entrypoint(image, opts.image_entrypoints)]
    argv = [mounts.rewrite(expand(a, penv)) for a in command + args]
    local_exe = mounts.rewrite_path(argv[0])
    if local_exe and os.path.isfile(local_exe) and os.access(local_exe, os.X_OK):
        exe = local_exe
    else:
        exe = find_executable(argv[0], opts.bin_dirs)
    if exe is None:
        where = ", ".join(opts.bin_dirs + ["PATH"])
        raise StartError("executable %r not found (looked in %s)" % (os.path.basename(argv[0]), where))
    argv[0] = exe

    # process environment
    home = os.path.join(poddir, "home")
    work = os.path.join(poddir, "work")
    tmp = mounts.local("/tmp") or os.path.join(poddir, "tmp")
    for d in (home, work, tmp):
        os.makedirs(d, exist_ok=True)
    if c.get("workingDir"):
        wd = mounts.rewrite_path(c["workingDir"])
        if wd:
            os.makedirs(wd, exist_ok=True)
            work = wd
    env = {
        "PATH": os.pathsep.join([os.path.abspath(d) for d in opts.bin_dirs] + [os.environ.get("PATH", "/usr/bin:/bin")]),
        "HOME": home,
        "HOSTNAME": name,
        "TMPDIR": tmp,
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "MIRA_WORKER_ID": name,
    }
    for n in opts.pass_env:
        if n in os.environ:
            env[n] = os.environ[n]
    for k, v in penv.items():
        env[k] = mounts.rewrite(v)
    env.update(opts.env)
    return Launch(argv, env, work, c.get("name", ""), image)


# ---------------------------------------------------------------- running pods

class Run:
    """One Pod's process and what is left to report about it."""

    def __init__(self, pod, poddir, logpath):
        meta = pod["metadata"]
        self.ns = meta["namespace"]
        self.name = meta["name"]
        self.uid = meta["uid"]
        self.key = "%s/%s" % (self.ns, self.name)
        self.poddir = poddir
        self.logpath = logpath
        first = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        self.container = first.get("name", "")
        self.image = first.get("image", "")
        self.proc = None
        self.pid = None
        self.tail = collections.deque(maxlen=STDERR_LINES)
        self.tee = None
        self.started_at = None
        self.finished_at = None
        self.exit_code = None
        self.reason = None
        self.message = None
        self.running_reported = False
        self.kill_deadline = None     # set once the process is told to stop
        self.deleting = False         # the Pod is being deleted: report nothing

    def start(self, launch, log):
        logf = open(self.logpath, "ab")
        logf.write(("# process-kubelet %s: pod %s (uid %s) container %s image %s\n# cwd %s\n# argv %s\n"
                    % (now_rfc3339(), self.key, self.uid, launch.container, launch.image, launch.cwd,
                       json.dumps(launch.argv))).encode("utf-8"))
        logf.flush()
        try:
            self.proc = subprocess.Popen(launch.argv, env=launch.env, cwd=launch.cwd, stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            logf.write(("# process-kubelet: cannot start: %s\n" % e).encode("utf-8"))
            logf.close()
            raise StartError("cannot start %s: %s" % (launch.argv[0], e))
        self.pid = self.proc.pid
        self.started_at = now_rfc3339()
        self.tee = threading.Thread(target=self._tee, args=(self.proc.stderr, logf), daemon=True)
        self.tee.start()
        log.info("pod %s: started pid %d: %s" % (self.key, self.pid, " ".join(launch.argv)))

    def _tee(self, pipe, logf):
        try:
            for line in iter(pipe.readline, b""):
                logf.write(line)
                logf.flush()
                self.tail.append(line[-MESSAGE_BYTES:])
        finally:
            pipe.close()
            logf.close()

    def fail_to_start(self, message):
        self.started_at = self.started_at or now_rfc3339()
        self.finished_at = now_rfc3339()
        self.exit_code = 128
        self.reason = "StartError"
        self.message = message[-MESSAGE_BYTES:]
        with open(self.logpath, "ab") as f:
            f.write(("# process-kubelet %s: pod %s: %s\n" % (now_rfc3339(), self.key, message)).encode("utf-8"))

    def alive(self):
        return self.proc is not None and self.exit_code is None

    def poll(self):
        """True when the process has just exited."""
        if self.proc is None or self.exit_code is not None:
            return False
        rc = self.proc.poll()
        if rc is None:
            return False
        if self.tee is not None:
            self.tee.join(timeout=5)
        self.finished_at = now_rfc3339()
        # a signal-killed process reports 128+signal, as a container runtime does
        self.exit_code = rc if rc >= 0 else 128 - rc
        self.reason = "Completed" if self.exit_code == 0 else "Error"
        if self.exit_code != 0:
            text = b"".join(self.tail)[-MESSAGE_BYTES:].decode("utf-8", "replace").lstrip("\ufffd")
            self.message = text.rstrip("\n")
        with open(self.logpath, "ab") as f:
            f.write(("# process-kubelet %s: exit code %d\n" % (self.finished_at, self.exit_code)).encode("utf-8"))
        return True

    def signal(self, sig):
        if self.alive():
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, grace):
        """Asks the process group to stop; KILL follows after grace seconds (see tick)."""
        if self.alive() and self.kill_deadline is None:
            self.signal(signal.SIGTERM)
            self.kill_deadline = time.monotonic() + grace

    def tick(self):
        if self.alive() and self.kill_deadline is not None and time.monotonic() >= self.kill_deadline:
            self.signal(signal.SIGKILL)

    def _container_status(self, state, ready):
        return {
            "name": self.container,
            "image": self.image,
            "imageID": "",
            "containerID": "process://%d" % self.pid if self.pid else "",
            "ready": ready,
            "started": ready,
            "restartCount": 0,
            "state": state,
        }

    @staticmethod
    def _conditions(ready, reason=None):
        t = now_rfc3339()
        out = []
        for typ in ("Initialized", "Ready", "ContainersReady", "PodScheduled"):
            ok = ready or typ in ("Initialized", "PodScheduled")
            cond = {"type": typ, "status": "True" if ok else "False", "lastTransitionTime": t}
            if not ok and reason:
                cond["reason"] = reason
            out.append(cond)
        return out

    def running_status(self):
        return {
            "phase": "Running",
            "startTime": self.started_at,
            "conditions": self._conditions(True),
            "containerStatuses": [self._container_status({"running": {"startedAt": self.started_at}}, True)],
        }

    def terminal_status(self):
        term = {"exitCode": self.exit_code, "reason": self.reason, "startedAt": self.started_at,
                "finishedAt": self.finished_at}
        if self.pid:
            term["containerID"] = "process://%d" % self.pid
        if self.message:
            term["message"] = self.message
        return {
            "phase": "Succeeded" if self.exit_code == 0 else "Failed",
            "startTime": self.started_at,
            "conditions": self._conditions(False, "PodCompleted"),
            "containerStatuses": [self._container_status({"terminated": term}, False)],
        }


class Kubelet:
    def __init__(self, opts, log):
        self.opts = opts
        self.log = log
        self.kube = Kube(opts.kubectl, opts.kubeconfig)
        self.runs = {}          # uid -> Run
        self.done = set()       # uids reported terminal (never started again)
        self.config_wait = {}   # uid -> (next try, last message) for pods missing a ConfigMap/Secret
        self.stopping = False
        self.logs = None        # the LogServer, with --serve-logs
        if opts.serve_logs:
            self.logs = LogServer(opts.log_dir, opts.work_dir, log)
            self.register_node()

    def register_node(self):
        name = self.opts.node_name
        self.kube.create_or_apply("apply", {"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": name, "labels": {"mira.dev/process-kubelet": "true"}}}, "registering node %s" % name)
        t = now_rfc3339()
        self.kube.patch_node_status(name, {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.logs.port}},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "process-kubelet serves its pods' logs", "lastHeartbeatTime": t,
                            "lastTransitionTime": t}]})
        self.log.info("node %s: serving logs on 127.0.0.1:%d" % (name, self.logs.port))

    def bind(self, ns, name):
        """Assigns the Pod to this kubelet's Node, so that the API server knows where its logs are."""
        self.kube.create_or_apply("create", {
            "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.opts.node_name}}, "binding pod %s/%s" % (ns, name))

    # -- one poll

    def step(self):
        for run in list(self.runs.values()):
            run.tick()
            if run.poll():
                self.log.info("pod %s: pid %d exited with %d" % (run.key, run.pid, run.exit_code))
        try:
            pods = self.kube.list_pods(self.opts.namespace, self.opts.selector)
        except ApiError as e:
            self.log.error(str(e), key="list")
            pods = None
        if pods is not None:
            self.reconcile(pods)
        self.report()

    def reconcile(self, pods):
        by_uid = {}
        for p in pods:
            uid = (p.get("metadata") or {}).get("uid")
            if uid:
                by_uid[uid] = p
        # gone or being deleted: stop the process
        for uid, run in list(self.runs.items()):
            pod = by_uid.get(uid)
            if pod is None or pod["metadata"].get("deletionTimestamp"):
                if not run.deleting:
                    self.log.info("pod %s: %s; stopping its process" % (run.key, "deleted" if pod is None else "being deleted"))
                run.deleting = True
                run.stop(self.opts.kill_grace)
                if not run.alive():
                    if pod is not None:
                        try:
                            self.kube.force_delete_pod(run.ns, run.name)
                        except ApiError as e:
                            self.log.error(str(e))
                            continue
                    self.finish(run)
        self.done &= set(by_uid)
        # Running with a process of an earlier instance of this script (which was killed): that
        # process is gone or no longer watched, so the Pod fails rather than running forever.
        for uid, pod in by_uid.items():
            if uid in self.runs or uid in self.done or pod["metadata"].get("deletionTimestamp"):
                continue
            status = pod.get("status") or {}
            first = (status.get("containerStatuses") or [{}])[0]
            if status.get("phase") == "Running" and str(first.get("containerID", "")).startswith("process://"):
                self.fail_lost(pod, first)
        for uid in list(self.config_wait):
            if uid not in by_uid:
                del self.config_wait[uid]
        # start Pending pods, oldest first, while there is room
        active = sum(1 for r in self.runs.values() if r.alive())
        pending = [p for uid, p in by_uid.items()
                   if uid not in self.runs and uid not in self.done
                   and (p.get("spec") or {}).get("nodeName", self.opts.node_name) == self.opts.node_name
                   and (p.get("status") or {}).get("phase", "Pending") == "Pending"
                   and not p["metadata"].get("deletionTimestamp")]
        pending.sort(key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["namespace"], p["metadata"]["name"]))
        for pod in pending:
            if active >= self.opts.max_running or self.stopping:
                break
            uid = pod["metadata"]["uid"]
            wait = self.config_wait.get(uid)
            if wait and time.monotonic() < wait[0]:
                continue
            if self.start(pod):
                active += 1

    def start(self, pod):
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        poddir = os.path.join(self.opts.work_dir, "%s.%s.%s" % (ns, name, uid[:8]))
        logpath = os.path.join(self.opts.log_dir, "%s_%s.log" % (ns, name))
        run = Run(pod, poddir, logpath)
        try:
            launch = resolve(pod, self.kube, self.opts, poddir, self.log)
        except ConfigError as e:
            self.wait_for_config(pod, run, str(e))
            shutil.rmtree(poddir, ignore_errors=True)
            return False
        except ApiError as e:
            self.log.error("pod %s/%s: %s" % (ns, name, e))
            shutil.rmtree(poddir, ignore_errors=True)
            return False
        except StartError as e:
            self.log.info("pod %s/%s: %s" % (ns, name, e))
            run.fail_to_start(str(e))
            self.runs[uid] = run
            return False
        except OSError as e:
            self.log.error("pod %s/%s: preparing its files: %s" % (ns, name, e))
            self.config_wait[uid] = (time.monotonic() + CONFIG_RETRY_SECONDS, str(e))
            return False
        self.config_wait.pop(uid, None)
        if self.logs and not (pod.get("spec") or {}).get("nodeName"):
            try:
                self.bind(ns, name)
            except ApiError as e:
                self.log.error("pod %s/%s: %s" % (ns, name, e))
                shutil.rmtree(poddir, ignore_errors=True)
                return False
        self.runs[uid] = run
        try:
            run.start(launch, self.log)
        except StartError as e:
            self.log.info("pod %s/%s: %s" % (ns, name, e))
            run.fail_to_start(str(e))
            return False
        return True

    def fail_lost(self, pod, container_status):
        meta = pod["metadata"]
        t = now_rfc3339()
        message = "the process-kubelet that ran this pod's process stopped; the process is lost"
        term = {"exitCode": 137, "reason": "Error", "message": message, "finishedAt": t,
                "startedAt": ((container_status.get("state") or {}).get("running") or {}).get("startedAt", t),
                "containerID": container_status.get("containerID", "")}
        cs = dict(container_status, ready=False, started=False, state={"terminated": term})
        status = {"phase": "Failed", "conditions": Run._conditions(False, "PodCompleted"), "containerStatuses": [cs]}
        try:
            self.kube.patch_status(meta["namespace"], meta["name"], status)
            self.log.info("pod %s/%s: Running from an earlier process-kubelet; reported Failed" % (meta["namespace"], meta["name"]))
            self.done.add(meta["uid"])
        except NotFound:
            pass
        except ApiError as e:
            self.log.error(str(e))

    def wait_for_config(self, pod, run, message):
        uid = run.uid
        previous = self.config_wait.get(uid)
        self.config_wait[uid] = (time.monotonic() + CONFIG_RETRY_SECONDS, message)
        if previous and previous[1] == message:
            return
        self.log.info("pod %s: cannot start yet: %s" % (run.key, message))
        status = {"containerStatuses": [run._container_status(
            {"waiting": {"reason": "CreateContainerConfigError", "message": message}}, False)]}
        try:
            self.kube.patch_status(run.ns, run.name, status)
        except ApiError as e:
            self.log.error(str(e))

    def report(self):
        for run in list(self.runs.values()):
            if run.deleting:
                continue
            try:
                if run.proc is not None and not run.running_reported and run.exit_code is None:
                    self.kube.patch_status(run.ns, run.name, run.running_status())
                    run.running_reported = True
                    self.log.debug("pod %s: reported Running" % run.key)
                if run.exit_code is not None:
                    status = run.terminal_status()
                    self.kube.patch_status(run.ns, run.name, status)
                    self.log.info("pod %s: reported %s (exit code %d)" % (run.key, status["phase"], run.exit_code))
                    self.done.add(run.uid)
                    self.finish(run)
            except NotFound:
                self.log.info("pod %s: gone; stopping its process" % run.key)
                run.deleting = True
                run.stop(self.opts.kill_grace)
            except ApiError as e:
                self.log.error(str(e))

    def finish(self, run):
        self.runs.pop(run.uid, None)
        if not self.opts.keep_workdirs:
            shutil.rmtree(run.poddir, ignore_errors=True)

    # -- lifecycle

    def shutdown(self):
        alive = [r for r in self.runs.values() if r.alive()]
        if alive:
            self.log.info("stopping %d process(es)" % len(alive))
        for r in alive:
            r.stop(self.opts.kill_grace)
        deadline = time.monotonic() + self.opts.kill_grace
        while any(r.alive() for r in alive) and time.monotonic() < deadline:
            for r in alive:
                r.poll()
            time.sleep(0.05)
        for r in alive:
            if r.alive():
                r.signal(signal.SIGKILL)
                try:
                    r.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass

    def run_forever(self):
        def on_signal(signum, _frame):
            self.stopping = True
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.log.info("watching pods in %s (max %d running, poll %.2fs)"
                      % (self.opts.namespace or "all namespaces", self.opts.max_running, self.opts.poll))
        try:
            while not self.stopping:
                t0 = time.monotonic()
                try:
                    self.step()
                except Exception as e:   # never die on one bad pod or answer
                    self.log.error("unexpected error: %r" % e)
                time.sleep(max(0.0, self.opts.poll - (time.monotonic() - t0)))
        finally:
            self.shutdown()
            if self.logs:
                self.logs.close()
                try:
                    self.kube.delete_node(self.opts.node_name)
                except ApiError as e:
                    self.log.error(str(e))
        self.log.info("stopped")


def parse_args(argv):
    p = argparse.ArgumentParser(description="A test kubelet that runs Pods as local processes.")
    p.add_argument("--log-dir", required=True, help="per-pod logs go to <log-dir>/<namespace>_<pod>.log")
    p.add_argument("--bin-dir", action="append", default=[], help="where executables are looked up first (repeatable)")
    p.add_argument("--namespace", "-n", default="", help="only this namespace (default: all)")
    p.add_argument("--selector", "-l", default="", help="only pods matching this label selector")
    p.add_argument("--max-running", type=int, default=2, help="processes running at once (default 2)")
    p.add_argument("--poll", type=float, default=0.3, help="seconds between polls (default 0.3)")
    p.add_argument("--work-dir", default="", help="per-pod temp dirs go here (default: a new temp dir, removed at exit)")
    p.add_argument("--keep-workdirs", action="store_true", help="keep per-pod dirs after their pod finishes")
    p.add_argument("--image-entrypoint", action="append", default=[], metavar="GLOB=CMD",
                   help="command of containers without one whose image matches GLOB (repeatable)")
    p.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                   help="pass this variable from this script's environment to every process (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set this variable for every process, over the pod's own (repeatable)")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG", ""), help="default: $KUBECONFIG")
    p.add_argument("--kubectl", default="/usr/bin/kubectl")
    p.add_argument("--kill-grace", type=float, default=5.0, help="seconds between TERM and KILL (default 5)")
    p.add_argument("--node-name", default="process-kubelet",
                   help="what spec.nodeName reads as (fieldRef); with --serve-logs, the Node registered")
    p.add_argument("--serve-logs", action="store_true",
                   help="register --node-name as a Node, bind the pods to it and serve their logs (kubectl logs)")
    p.add_argument("--verbose", "-v", action="store_true")
    opts = p.parse_args(argv)
    if opts.max_running < 1:
        p.error("--max-running must be at least 1")
    rules = []
    for r in opts.image_entrypoint:
        glob, sep, cmd = r.partition("=")
        if not sep or not glob or not cmd:
            p.error("--image-entrypoint wants GLOB=CMD, got %r" % r)
        rules.append((glob, cmd))
    opts.image_entrypoints = rules
    env = {}
    for kv in opts.env:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            p.error("--env wants NAME=VALUE, got %r" % kv)
        env[k] = v
    opts.env = env
    return opts


def main(argv):
    opts = parse_args(argv)
    log = Log(opts.verbose)
    os.makedirs(opts.log_dir, exist_ok=True)
    own_work = not opts.work_dir
    if own_work:
        opts.work_dir = tempfile.mkdtemp(prefix="process-kubelet.")
    os.makedirs(opts.work_dir, exist_ok=True)
    opts.bin_dirs = [os.path.abspath(d) for d in opts.bin_dir]
    try:
        Kubelet(opts, log).run_forever()
    finally:
        if own_work and not opts.keep_workdirs:
            shutil.rmtree(opts.work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
