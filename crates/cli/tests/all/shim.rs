//! The containerd shim (`containerd-shim-wms-v1`, runtime `io.containerd.wms.v1`) against real
//! parts: Debian's containerd with its own root, state, socket and config in a temporary
//! directory, the shim on its PATH, Debian's `docker-registry`, images pushed with
//! `wms push --containerd` and pulled with `ctr image pull --plain-http` (docs/shim.md).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{Registry, WMS, artifacts, client, examples, rt, wms_command};

/// The shim under test: `WMS_TEST_SHIM`, else beside the `wms` binary in the same target
/// directory (cargo builds it with the workspace: `cargo build -p wms-shim`).
fn shim_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WMS_TEST_SHIM") {
        return p.into();
    }
    let path = Path::new(WMS).with_file_name("containerd-shim-wms-v1");
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p wms-shim` (scripts/test does) or set WMS_TEST_SHIM",
        path.display()
    );
    path
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Why this test cannot run here, if it cannot: containerd needs root, and Debian's `containerd`
/// and `runc` packages (scripts/test and .ci/run install them).
fn cannot_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("containerd needs root; run the tests as root".to_string());
    }
    for tool in ["containerd", "ctr"] {
        if on_path(tool).is_none() {
            return Some(format!(
                "`{tool}` is not installed: apt-get install containerd runc (scripts/test does as root)"
            ));
        }
    }
    None
}

/// A containerd of this test's own: root, state, socket and config in a temporary directory,
/// the CRI plugin off, the shim on its PATH. Stopped on drop.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Containerd {
    fn start() -> Containerd {
        Self::start_with(None)
    }

    /// With `cri` as the CRI plugin's configuration (`{dir}` is this containerd's directory);
    /// without, the CRI plugin is off.
    fn start_with(cri: Option<&str>) -> Containerd {
        Self::start_full(cri, &[])
    }

    /// With `env` in containerd's environment (which its shims inherit).
    fn start_full(cri: Option<&str>, env: &[(&str, &str)]) -> Containerd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let mut config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n{disabled}\n[grpc]\n  address = \"{sock}\"\n\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\n[debug]\n  address = \"\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            disabled = if cri.is_some() {
                ""
            } else {
                "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
            },
        );
        if let Some(cri) = cri {
            config.push('\n');
            config.push_str(&cri.replace("{dir}", &d.display().to_string()));
            std::fs::create_dir_all(d.join("cni/bin")).unwrap();
            std::fs::create_dir_all(d.join("cni/conf")).unwrap();
        }
        std::fs::write(d.join("config.toml"), config).unwrap();
        // The shim is found on containerd's PATH by its name.
        let bin = d.join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(shim_binary(), bin.join("containerd-shim-wms-v1")).unwrap();
        let path = std::env::join_paths(
            std::iter::once(bin.clone())
                .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
        )
        .unwrap();
        let home = d.join("home");
        std::fs::create_dir(&home).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            // Nothing of the shim's reaches the user's home or cache.
            .env("HOME", &home)
            .env("XDG_CACHE_HOME", home.join("cache"))
            .env_remove("WMS_CACHE_DIR")
            .env_remove("WMS_TRUSTED_PUBLISHERS")
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start containerd");
        let c = Containerd { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start within 30 s:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.socket).args(args);
        cmd
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.ctr_command(args).output().unwrap()
    }

    /// Runs `ctr ARGS...`, which must succeed; its standard output.
    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\n{}{}\ncontainerd:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A failed test may leave its task running: shims outlive containerd, so stop them first.
        for ns in ["default", "k8s.io"] {
            let tasks = self.ctr(&["-n", ns, "task", "ls", "-q"]);
            for id in String::from_utf8_lossy(&tasks.stdout).split_whitespace() {
                let _ = self.ctr(&["-n", ns, "task", "kill", "-s", "SIGKILL", id]);
                let deadline = Instant::now() + Duration::from_secs(10);
                while !self.ctr(&["-n", ns, "task", "delete", id]).status.success()
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let containers = self.ctr(&["-n", ns, "container", "ls", "-q"]);
            for id in String::from_utf8_lossy(&containers.stdout).split_whitespace() {
                let _ = self.ctr(&["-n", ns, "container", "delete", id]);
            }
        }
        // SAFETY: kill with our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child whose standard output and error are collected as they come.
struct Collected {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Collected {
    fn spawn(mut cmd: Command) -> Collected {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        Collected { child, out }
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn wait_for(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.output().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the readers catch the last lines.
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "exited ({status}) before printing {needle:?}:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {within:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Collected {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes running `binary` (by their executable) with `arg` on their command line.
fn processes_of(binary: &Path, arg: &Path) -> Vec<i32> {
    let target = std::fs::canonicalize(binary).unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let arg = arg.as_os_str().as_encoded_bytes();
        if std::fs::read_link(entry.path().join("exe")).is_ok_and(|exe| exe == target)
            && cmdline.split(|b| *b == 0).any(|a| a == arg)
        {
            found.push(pid);
        }
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `wms push --containerd APP REF` with a cache and Docker config of the test's own.
fn push_for_containerd(app: &Path, reference: &str) {
    push_for_containerd_with(app, reference, &[]);
}

/// [`push_for_containerd`] with more `wms push` options.
fn push_for_containerd_with(app: &Path, reference: &str, options: &[&str]) {
    let home = tempfile::tempdir().unwrap();
    let out = wms_command()
        .args(["push", "--containerd"])
        .args(options)
        .arg(app)
        .arg(reference)
        .env("WMS_CACHE_DIR", home.path().join("cache"))
        .env("DOCKER_CONFIG", home.path().join("docker"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wms push --containerd failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_app_image_pulled_by_containerd_serves_http_and_stops_on_kill() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let shim = shim_binary();
    let registry = Registry::start();
    let reference = registry.reference("hello-containerd:1");
    push_for_containerd(&examples("hello"), &reference);

    let containerd = Containerd::start();
    // containerd unpacks the image like any other (containerd 1.6 could not unpack wasm layers).
    containerd.ctr_ok(&["image", "pull", "--plain-http", &reference]);
    // The platform container tools use for wasm (`docker run --platform wasi/wasm`).
    let images = containerd.ctr_ok(&["image", "ls"]);
    assert!(
        images
            .lines()
            .any(|l| l.starts_with(&reference) && l.contains("wasi/wasm")),
        "{images}"
    );

    let id = &format!("wms-shim-test-{}", std::process::id());
    // With the admin listener the container's environment asks for.
    let admin = free_port();
    let admin_env = format!("WMS_ADMIN_LISTEN={admin}");
    let (run, port) = start_serving_with(&containerd, &reference, id, &["--env", &admin_env]);

    let body = rt().block_on(async {
        let resp = client()
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    });
    assert_eq!(body.trim_end(), "Hello from wms!");
    // The same metrics and probes as `wms up`'s, on loopback.
    let (ready, metrics) = rt().block_on(async {
        let get = |path: &str| {
            client()
                .get(format!("http://127.0.0.1:{admin}{path}"))
                .send()
        };
        let ready = get("/readyz").await.unwrap().status();
        let metrics = get("/metrics").await.unwrap().text().await.unwrap();
        (ready, metrics)
    });
    assert_eq!(ready, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wms_requests_total{component=\"hello\"")
                && l.contains("class=\"2xx\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains("wms_pool_slots{state=\"free\"}"),
        "{metrics}"
    );

    let tasks = containerd.ctr_ok(&["task", "ls"]);
    let pid: i32 = tasks
        .lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no running task {id}:\n{tasks}"));
    assert!(
        !processes_of(&shim, &containerd.socket).is_empty(),
        "no shim process while the task runs"
    );

    // `ctr task kill` sends SIGTERM: the app stops accepting, drains and exits 0.
    let output = stop_serving(&containerd, id, run);
    assert!(output.contains("SIGTERM received"), "{output}");

    // Nothing is left: no task, no container (--rm), no guest process, no shim.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let tasks = containerd.ctr_ok(&["task", "ls"]);
        let containers = containerd.ctr_ok(&["container", "ls", "-q"]);
        let stray = processes_of(&shim, &containerd.socket);
        let guest_alive = Path::new(&format!("/proc/{pid}")).exists();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .filter(|l| l.contains(containerd.dir.path().to_str().unwrap()))
            .map(str::to_string)
            .collect();
        if !tasks.contains(id.as_str())
            && !containers.contains(id.as_str())
            && stray.is_empty()
            && !guest_alive
            && mounts.is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind after the task stopped: tasks {tasks:?}, containers {containers:?}, shim processes {stray:?}, guest process {pid} alive: {guest_alive}, mounts {mounts:?}\ncontainerd:\n{}",
            containerd.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_command_image_runs_to_completion_with_its_args_env_mounts_and_exit_code() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let registry = Registry::start();
    let p2 = registry.reference("cmd-containerd:p2");
    let p1 = registry.reference("cmd-containerd:p1");
    push_for_containerd(Path::new(artifacts::CMD), &p2);
    push_for_containerd(Path::new(artifacts::CMD_P1), &p1);
    let containerd = Containerd::start();
    containerd.ctr_ok(&["image", "pull", "--plain-http", &p2]);
    containerd.ctr_ok(&["image", "pull", "--plain-http", &p1]);

    // `ctr run` (attached) exits with the task's status and relays its output.
    let run = |image: &str, n: usize, extra: &[&str], args: &[&str]| {
        let id = format!("wms-cmd-{}-{n}", std::process::id());
        let mut cmd = containerd.ctr_command(&["run", "--rm", "--runtime", "io.containerd.wms.v1"]);
        cmd.args(extra).arg(image).arg(&id).args(args);
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&p2, 1, &[], &["args", "from", "containerd"]);
    assert_eq!((code, out.trim()), (0, "from|containerd"), "{err}");
    // A read-only root filesystem: the image is prepared in the container's /dev/shm instead.
    let (code, out, err) = run(&p2, 10, &["--read-only"], &["args", "read-only"]);
    assert_eq!((code, out.trim()), (0, "read-only"), "{err}");
    assert!(
        err.contains("preparing the image in /dev/shm/.wms-shim"),
        "{err}"
    );
    // A volume at /.wms-shim (a kubelet's emptyDir is mode 0777) is used (no fallback to
    // /dev/shm), made the shim's alone, not handed to the command, and left empty: each start
    // prepares the image in a fresh directory of its own, removed when it ends.
    let volume = tempfile::tempdir().unwrap();
    std::fs::set_permissions(volume.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let at = format!(
        "type=bind,src={},dst=/.wms-shim,options=rbind:rw",
        volume.path().display()
    );
    let (code, out, err) = run(
        &p2,
        11,
        &["--read-only", "--mount", &at],
        &["read", "/.wms-shim"],
    );
    // (A preview 2 command reports a failure as 1.)
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("read /.wms-shim: No such file"), "{err}");
    assert!(!err.contains("preparing the image in /dev/shm"), "{err}");
    let left: Vec<_> = std::fs::read_dir(volume.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    let mode = std::fs::metadata(volume.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let (code, out, err) = run(&p2, 2, &["--env", "GREETING=hi"], &["env"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l == "GREETING=hi"), "{out}\n{err}");
    // A preview 1 module reports any status; a trap is 134, as with `wms run`.
    let (code, _, err) = run(&p1, 3, &[], &["exit", "7"]);
    assert_eq!(code, 7, "{err}");
    let (code, _, err) = run(&p1, 4, &[], &["trap"]);
    assert_eq!(code, 134, "{err}");
    assert!(err.contains("trapped"), "{err}");
    let (code, _, err) = run(&p2, 5, &[], &["trap"]);
    assert_ne!(code, 0, "{err}");
    // The container's mounts are the command's directories, read-only where the mount is.
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("hello.txt"), "from the host").unwrap();
    let ro = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        data.path().display()
    );
    let rw = format!(
        "type=bind,src={},dst=/out,options=rbind:rw",
        data.path().display()
    );
    let (code, out, err) = run(&p1, 6, &["--mount", &ro], &["read", "/data/hello.txt"]);
    assert_eq!((code, out.as_str()), (0, "from the host"), "{err}");
    let (code, _, err) = run(&p1, 7, &["--mount", &ro], &["write", "/data/new.txt"]);
    assert_eq!(code, 2, "{err}");
    assert!(!data.path().join("new.txt").exists());
    let (code, _, err) = run(&p1, 8, &["--mount", &rw], &["write", "/out/new.txt"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(data.path().join("new.txt")).unwrap(),
        "written by the guest"
    );
    // Nothing else of the container's filesystem: not the bundle, not the root.
    let (code, _, err) = run(&p1, 9, &[], &["read", "/wms/manifest.json"]);
    assert_eq!(code, 2, "{err}");

    let tasks = containerd.ctr_ok(&["task", "ls", "-q"]);
    assert!(tasks.trim().is_empty(), "tasks left: {tasks}");
    let stray = processes_of(&shim_binary(), &containerd.socket);
    assert!(stray.is_empty(), "shim processes left: {stray:?}");
}

/// Leftovers of containers whose id starts with `prefix`: cgroups (v1 controllers or v2) under
/// containerd's `default` namespace path, and mounts.
fn leftovers(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut parents = vec![PathBuf::from("/sys/fs/cgroup/default")];
    for entry in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        parents.push(entry.path().join("default"));
    }
    for parent in parents {
        for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                found.push(entry.path().display().to_string());
            }
        }
    }
    for line in std::fs::read_to_string("/proc/mounts").unwrap().lines() {
        if line.contains(prefix) {
            found.push(line.to_string());
        }
    }
    found
}

/// A root filesystem for a runc container running the host's own `sleep`: the host's `/usr`
/// bind-mounted read-only, and `bin`, `lib`... as on the host (links into `usr` on Debian 12).
fn host_rootfs(dir: &Path) -> Vec<String> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("usr")).unwrap();
    let mut mounts = vec!["type=bind,src=/usr,dst=/usr,options=rbind:ro".to_string()];
    for top in ["bin", "sbin", "lib", "lib64"] {
        let host = Path::new("/").join(top);
        match std::fs::read_link(&host) {
            Ok(target) => std::os::unix::fs::symlink(target, rootfs.join(top)).unwrap(),
            Err(_) if host.is_dir() => {
                std::fs::create_dir(rootfs.join(top)).unwrap();
                mounts.push(format!("type=bind,src=/{top},dst=/{top},options=rbind:ro"));
            }
            Err(_) => {}
        }
    }
    mounts
}

/// `ctr run --rm` of `reference` as container `id` with the wms runtime and the host's network,
/// listening on a free loopback port; returns once it serves.
fn start_serving(containerd: &Containerd, reference: &str, id: &str) -> (Collected, u16) {
    start_serving_with(containerd, reference, id, &[])
}

/// [`start_serving`] with more `ctr run` options.
fn start_serving_with(
    containerd: &Containerd,
    reference: &str,
    id: &str,
    options: &[&str],
) -> (Collected, u16) {
    let port = free_port();
    let listen = format!("WMS_LISTEN=127.0.0.1:{port}");
    let mut cmd = containerd.ctr_command(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.wms.v1",
        "--net-host",
        "--env",
        &listen,
    ]);
    cmd.args(options).args([reference, id]);
    let mut run = Collected::spawn(cmd);
    run.wait_for(
        &format!("Serving http://127.0.0.1:{port}"),
        Duration::from_secs(60),
    );
    (run, port)
}

/// Starts `reference` as container `id` serving on a free loopback port, checks that it answers
/// 200, stops it with `ctr task kill` and returns its output (it must exit 0).
fn serve_once(containerd: &Containerd, reference: &str, id: &str) -> String {
    serve_once_with(containerd, reference, id, &[])
}

/// [`serve_once`] with more `ctr run` options.
fn serve_once_with(containerd: &Containerd, reference: &str, id: &str, options: &[&str]) -> String {
    let (run, port) = start_serving_with(containerd, reference, id, options);
    let status = rt().block_on(async {
        client()
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200, "{id}:\n{}", run.output());
    stop_serving(containerd, id, run)
}

/// Stops container `id` (started by [`start_serving`]) with `ctr task kill` and checks that its
/// run ended well; returns its output.
fn stop_serving(containerd: &Containerd, id: &str, mut run: Collected) -> String {
    containerd.ctr_ok(&["task", "kill", id]);
    let status = run
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{id}: the task did not stop within 30 s:\n{}", run.output()));
    let output = run.output();
    assert_run_ended_well(containerd, id, status, &output);
    output
}

/// Checks that a `ctr run --rm` of container `id` ended well: exit 0, or the race where ctr saw
/// the exit event and deleted the task before containerd marked it stopped (seen once in 20
/// cycles on a loaded machine; the app had exited 0 after SIGTERM). The clean-up ctr could not
/// do is then done here, once containerd has caught up; the callers' leftover checks still
/// apply.
fn assert_run_ended_well(
    containerd: &Containerd,
    id: &str,
    status: std::process::ExitStatus,
    output: &str,
) {
    if !status.success() && output.contains("task must be stopped before deletion") {
        assert!(output.contains("SIGTERM received"), "{id}:\n{output}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let task = containerd.ctr(&["task", "delete", id]);
            let gone = !containerd.ctr_ok(&["task", "ls"]).contains(id);
            if task.status.success() || gone {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: the task never stopped:\n{output}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let deleted = containerd.ctr(&["container", "delete", id]);
        assert!(
            deleted.status.success() || !containerd.ctr_ok(&["container", "ls", "-q"]).contains(id),
            "{id}: the container could not be deleted:\n{}",
            String::from_utf8_lossy(&deleted.stderr)
        );
        return;
    }
    assert!(status.success(), "{id}: ctr run exited {status}:\n{output}");
}

/// `ctr run` shows a container its cgroup only when asked; the kubelet's containers always see
/// theirs.
const CGROUP_MOUNT: &str = "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro";

/// A container's memory limit (`ctr run --memory-limit`, a pod's `limits.memory`) bounds each
/// guest below it, so a guest that eats memory fails on its own instead of the kernel ending
/// the container, and the pool keeps at most 1/16 of it resident between requests.
#[test]
fn the_containers_memory_limit_bounds_its_guests_and_the_pools_budget() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    const MIB: u64 = 1 << 20;
    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("wms.toml"),
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"hog\"\n\
             [[trigger.http]]\nroute = \"/...\"\ncomponent = \"kit\"\n\
             [component.kit]\nsource = {:?}\n[component.kit.tool.wms]\nmax_memory = \"1GiB\"\n",
            artifacts::TESTKIT
        ),
    )
    .unwrap();
    let registry = Registry::start();
    let app_ref = registry.reference("hog-limit:1");
    let cmd_ref = registry.reference("cmd-limit:1");
    push_for_containerd(app.path(), &app_ref);
    push_for_containerd(Path::new(artifacts::CMD), &cmd_ref);
    let containerd = Containerd::start();
    containerd.ctr_ok(&["image", "pull", "--plain-http", &app_ref]);
    containerd.ctr_ok(&["image", "pull", "--plain-http", &cmd_ref]);

    // A command that grows until it fails stops at the limit less wms's share, with its own
    // error and a trap's status, not the kernel's kill (137).
    let limit = (256 * MIB).to_string();
    let id = format!("wms-cmd-limit-{}", std::process::id());
    let out = containerd
        .ctr_command(&["run", "--rm", "--runtime", "io.containerd.wms.v1"])
        .args(["--memory-limit", &limit, "--mount", CGROUP_MOUNT])
        .args([cmd_ref.as_str(), &id, "hog"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(134), "{err}");
    assert!(
        err.contains("exceeded its memory limit of 192MiB (the container's limit 256MiB"),
        "{err}"
    );

    // An HTTP app: its component asks for 1 GiB, gets 384 MiB of the container's 512; the
    // hog's request fails alone and the app serves on. (Its root filesystem is read-only: the
    // image is prepared in the container's /dev/shm.)
    let limit = (512 * MIB).to_string();
    let id = format!("wms-app-limit-{}", std::process::id());
    let (run, port) = start_serving_with(
        &containerd,
        &app_ref,
        &id,
        &[
            "--memory-limit",
            &limit,
            "--mount",
            CGROUP_MOUNT,
            "--read-only",
        ],
    );
    let out = run.output();
    assert!(
        out.contains("container memory limit 512MiB: each guest may use at most 384MiB"),
        "{out}"
    );
    assert!(out.contains("max_memory 1GiB lowered to 384MiB"), "{out}");
    assert!(
        out.contains("at most 32MiB (1/16 of the cgroup memory limit 512MiB)"),
        "{out}"
    );
    let statuses = rt().block_on(async {
        let mut got = Vec::new();
        for path in ["/hog", "/fine"] {
            let resp = client()
                .get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await
                .unwrap();
            got.push(resp.status().as_u16());
        }
        got
    });
    assert_eq!(statuses, [500, 200], "{}", run.output());
    assert!(
        run.output().contains("exceeded its memory limit"),
        "{}",
        run.output()
    );
    stop_serving(&containerd, &id, run);
}

/// Capability sets of the process of container `id`, from the host (`CapEff`, `CapBnd`, ...),
/// over all its threads.
fn task_capabilities(containerd: &Containerd, id: &str) -> HashMap<String, String> {
    let tasks = containerd.ctr_ok(&["task", "ls"]);
    let pid = tasks
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f[1].to_string())
        })
        .unwrap_or_else(|| panic!("no task {id}:\n{tasks}"));
    // Capabilities are per thread: the union over every thread of the process.
    let mut sets: HashMap<String, String> = HashMap::new();
    for thread in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(thread.unwrap().path().join("status")).unwrap();
        for (k, v) in status
            .lines()
            .filter(|l| l.starts_with("Cap"))
            .filter_map(|l| l.split_once(':'))
        {
            let v = u64::from_str_radix(v.trim(), 16).unwrap();
            let had = sets
                .get(k)
                .map_or(0, |h| u64::from_str_radix(h, 16).unwrap());
            sets.insert(k.to_string(), format!("{:016x}", had | v));
        }
    }
    sets
}

/// A container that drops every capability (Kubernetes `capabilities: drop: [ALL]`) runs with
/// none. containerd then leaves the sets out of the spec and the container would otherwise keep
/// every capability of the shim.
#[test]
fn a_container_that_drops_every_capability_runs_with_none() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let registry = Registry::start();
    let reference = registry.reference("hello-nocaps:1");
    push_for_containerd(&examples("hello"), &reference);
    let containerd = Containerd::start();
    containerd.ctr_ok(&["image", "pull", "--plain-http", &reference]);
    let defaults = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];
    let mut options = Vec::new();
    for cap in defaults {
        options.extend(["--cap-drop", cap]);
    }
    let id = format!("wms-nocaps-{}", std::process::id());
    let (run, port) = start_serving_with(&containerd, &reference, &id, &options);
    let caps = task_capabilities(&containerd, &id);
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(caps[set], "0000000000000000", "{set} of {caps:?}");
    }
    let status = rt().block_on(async {
        client()
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200, "{}", run.output());
    stop_serving(&containerd, &id, run);

    // A container with the default set keeps it: the shim drops only what nobody asked for.
    let id = format!("wms-defaultcaps-{}", std::process::id());
    let (run, _) = start_serving_with(&containerd, &reference, &id, &[]);
    let caps = task_capabilities(&containerd, &id);
    assert_ne!(caps["CapEff"], "0000000000000000", "{caps:?}");
    stop_serving(&containerd, &id, run);
}

#[test]
fn the_second_start_uses_code_compiled_at_the_first_and_kept_by_containerd() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let registry = Registry::start();
    let reference = registry.reference("hello-cached:1");
    push_for_containerd(&examples("hello"), &reference);
    let containerd = Containerd::start();
    containerd.ctr_ok(&["image", "pull", "--plain-http", &reference]);
    let compiles = || {
        containerd
            .log()
            .matches("precompiling layers for image")
            .count()
    };
    assert_eq!(compiles(), 0);

    // First start: the shim compiles the app and containerd keeps the code, labelled for wms
    // and referenced from the image so that it lives as long as the image.
    let id = format!("wms-cache-{}", std::process::id());
    let first = serve_once(&containerd, &reference, &format!("{id}-1"));
    assert_eq!(compiles(), 1, "{}", containerd.log());
    assert!(first.contains("loaded precompiled code"), "{first}");
    let content = containerd.ctr_ok(&["content", "ls"]);
    let cached: Vec<&str> = content
        .lines()
        .filter(|l| l.contains("runwasi.io/precompiled/wms/") && l.contains("/original="))
        .collect();
    assert_eq!(
        cached.len(),
        1,
        "no compiled code in containerd's store:\n{content}"
    );

    // Second start: the code comes from containerd's store, nothing is compiled.
    let second = serve_once(&containerd, &reference, &format!("{id}-2"));
    assert_eq!(compiles(), 1, "compiled again:\n{}", containerd.log());
    assert!(second.contains("loaded precompiled code"), "{second}");
    assert!(!second.contains("compiled in"), "{second}");

    // Commands too, a preview 2 component and a preview 1 module: compiled at the first start,
    // loaded from containerd's store at the second (which says so at debug level).
    for (n, wasm) in [(1, artifacts::CMD), (2, artifacts::CMD_P1)] {
        let reference = registry.reference(&format!("cmd-cached:{n}"));
        push_for_containerd(Path::new(wasm), &reference);
        containerd.ctr_ok(&["image", "pull", "--plain-http", &reference]);
        let before = compiles();
        let run = |start: usize| {
            let id = format!("{id}-cmd{n}-{start}");
            let out = containerd
                .ctr_command(&["run", "--rm", "--runtime", "io.containerd.wms.v1"])
                .args(["--env", "WMS_LOG=debug", &reference, &id, "args", "cached"])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(
                (out.status.code(), stdout.trim()),
                (Some(0), "cached"),
                "{err}"
            );
            err
        };
        let first = run(1);
        assert_eq!(compiles(), before + 1, "{first}\n{}", containerd.log());
        let second = run(2);
        assert_eq!(
            compiles(),
            before + 1,
            "compiled again:\n{}",
            containerd.log()
        );
        assert!(second.contains("loaded precompiled code for"), "{second}");
    }
}

/// Code pushed with the image (`wms push --containerd --precompile`) runs without compiling
/// when the image is named under a publisher the node trusts (`WMS_TRUSTED_PUBLISHERS` in
/// containerd's environment), and only then: a container's own environment does not count.
#[test]
fn a_trusted_publishers_precompiled_code_runs_without_compiling() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let target = match std::env::consts::ARCH {
        "riscv64" => "riscv64gc",
        a => a,
    };
    let registry = Registry::start();
    let reference = registry.reference("hello-aot:1");
    push_for_containerd_with(&examples("hello"), &reference, &["--precompile", target]);
    let pid = std::process::id();
    let trusted_line = format!(
        "using the precompiled code of {reference} (a trusted publisher) for {target}: nothing compiled"
    );

    // Not trusted by the node: compiled there, whatever the container's environment says.
    let containerd = Containerd::start();
    containerd.ctr_ok(&["image", "pull", "--plain-http", &reference]);
    let claim = format!("WMS_TRUSTED_PUBLISHERS={}", registry.addr);
    let out = serve_once_with(
        &containerd,
        &reference,
        &format!("wms-aot-untrusted-{pid}"),
        &["--env", &claim],
    );
    let log = containerd.log();
    assert!(log.contains("compiling the app for this node"), "{log}");
    assert!(!log.contains("trusted publisher"), "{log}");
    assert!(out.contains("loaded precompiled code"), "{out}");
    drop(containerd);

    // Trusted: the publisher's code is used as it is.
    let containerd = Containerd::start_full(None, &[("WMS_TRUSTED_PUBLISHERS", &registry.addr)]);
    containerd.ctr_ok(&["image", "pull", "--plain-http", &reference]);
    let out = serve_once(&containerd, &reference, &format!("wms-aot-trusted-{pid}"));
    let log = containerd.log();
    assert!(log.contains(&trusted_line), "{log}");
    assert!(!log.contains("compiling the app"), "{log}");
    assert!(out.contains("loaded precompiled code"), "{out}");
    assert!(!out.contains("compiled in"), "{out}");
}

#[test]
fn twenty_start_stop_cycles_leave_nothing_behind_and_a_runc_container_runs_beside() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let shim = shim_binary();
    let registry = Registry::start();
    let reference = registry.reference("hello-cycles:1");
    push_for_containerd(&examples("hello"), &reference);
    let containerd = Containerd::start();
    containerd.ctr_ok(&["image", "pull", "--plain-http", &reference]);

    // A runc container beside the wms ones, started first and still running at the end.
    let runc_id = format!("runc-beside-{}", std::process::id());
    let mounts = host_rootfs(containerd.dir.path());
    let rootfs = containerd.dir.path().join("rootfs");
    let mut args = vec!["run", "--detach", "--null-io", "--rootfs"];
    for m in &mounts {
        args.extend(["--mount", m]);
    }
    args.extend([rootfs.to_str().unwrap(), &runc_id, "/usr/bin/sleep", "600"]);
    containerd.ctr_ok(&args);

    let prefix = format!("wms-cycle-{}-", std::process::id());
    for cycle in 0..20 {
        serve_once(&containerd, &reference, &format!("{prefix}{cycle}"));
    }

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let tasks = containerd.ctr_ok(&["task", "ls"]);
        let containers = containerd.ctr_ok(&["container", "ls", "-q"]);
        let stray = processes_of(&shim, &containerd.socket);
        let left = leftovers(&prefix);
        if !tasks.contains(&prefix)
            && !containers.contains(&prefix)
            && stray.is_empty()
            && left.is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind by 20 cycles: tasks {tasks:?}, containers {containers:?}, shim processes {stray:?}, cgroups and mounts {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let tasks = containerd.ctr_ok(&["task", "ls"]);
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with(&runc_id) && l.contains("RUNNING")),
        "the runc container is not running beside the wms ones:\n{tasks}"
    );
    // Stopped and removed by Containerd's drop.
}

/// The architecture name of this host in image configs (Go's).
fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An image built here as an OCI archive for `ctr image import`, named `name`: one tar layer of
/// `files` (path, content, mode), compressed with Debian's gzip when `gzip`, and `config`
/// completed with the layer's diff id.
fn oci_archive(
    dir: &Path,
    name: &str,
    files: &[(&str, &[u8], u32)],
    gzip: bool,
    mut config: serde_json::Value,
) -> PathBuf {
    use sha2::Digest as _;
    let digest = |b: &[u8]| format!("sha256:{:x}", sha2::Sha256::digest(b));
    let tar_of = |entries: &[(&str, &[u8], u32)]| {
        let mut t = tar::Builder::new(Vec::new());
        for (path, data, mode) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            t.append_data(&mut h, path, *data).unwrap();
        }
        t.into_inner().unwrap()
    };
    let tar = tar_of(files);
    config["rootfs"] = serde_json::json!({ "type": "layers", "diff_ids": [digest(&tar)] });
    let (layer, layer_type) = if gzip {
        let mut child = Command::new("gzip")
            .arg("-9nc")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("gzip");
        let mut stdin = child.stdin.take().unwrap();
        let feed = std::thread::spawn(move || stdin.write_all(&tar).unwrap());
        let out = child.wait_with_output().unwrap();
        feed.join().unwrap();
        assert!(out.status.success());
        (out.stdout, "application/vnd.oci.image.layer.v1.tar+gzip")
    } else {
        (tar, "application/vnd.oci.image.layer.v1.tar")
    };
    let config = serde_json::to_vec(&config).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest(&config), "size": config.len() },
        "layers": [{ "mediaType": layer_type,
                     "digest": digest(&layer), "size": layer.len() }],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest), "size": manifest.len(),
            "annotations": { "io.containerd.image.name": name },
        }],
    }))
    .unwrap();
    let blob = |b: &[u8]| format!("blobs/sha256/{}", &digest(b)[7..]);
    let (lb, cb, mb) = (blob(&layer), blob(&config), blob(&manifest));
    let archive = tar_of(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644),
        ("index.json", &index, 0o644),
        (&lb, &layer, 0o644),
        (&cb, &config, 0o644),
        (&mb, &manifest, 0o644),
    ]);
    let path = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
    std::fs::write(&path, archive).unwrap();
    path
}

/// A pause image built here: Debian's static busybox sleeping. Nothing is fetched.
fn pause_archive(dir: &Path, name: &str) -> PathBuf {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is not installed");
    oci_archive(
        dir,
        name,
        &[("bin/busybox", &busybox, 0o755)],
        false,
        serde_json::json!({
            "architecture": goarch(),
            "os": "linux",
            "config": { "Entrypoint": ["/bin/busybox", "sleep", "2147483647"] },
        }),
    )
}

/// A classic wasm image, as `docker buildx build --platform wasi/wasm` makes them: the `.wasm`
/// in the root filesystem, named by the entry point, in a tar layer (gzip-compressed when
/// `gzip`, as buildx writes it).
fn classic_wasm_archive(dir: &Path, name: &str, wasm: &Path, os: &str, gzip: bool) -> PathBuf {
    let bytes = std::fs::read(wasm).unwrap();
    oci_archive(
        dir,
        name,
        &[("app.wasm", &bytes, 0o755)],
        gzip,
        serde_json::json!({
            "architecture": "wasm",
            "os": os,
            "config": { "Entrypoint": ["/app.wasm"] },
        }),
    )
}

#[test]
fn classic_wasi_wasm_images_run_their_entry_point() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let containerd = Containerd::start();
    let dir = containerd.dir.path();
    let (cmd, hello) = (
        "localhost/wms-test/classic-cmd:1",
        "localhost/wms-test/classic-hello:1",
    );
    for archive in [
        classic_wasm_archive(dir, cmd, Path::new(artifacts::CMD_P1), "wasip1", false),
        classic_wasm_archive(dir, hello, Path::new(artifacts::HELLO), "wasip2", true),
    ] {
        containerd.ctr_ok(&["image", "import", archive.to_str().unwrap()]);
    }
    // A command: its arguments follow the .wasm file (`ctr run IMAGE ID ARGS...` replaces the
    // image's entry point, so ARGS name the file first).
    let id = format!("wms-classic-{}", std::process::id());
    let out = containerd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.wms.v1",
            cmd,
            &format!("{id}-1"),
        ])
        .args(["/app.wasm", "args", "from", "a", "classic", "image"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "from|a|classic|image", "{stderr}");
    let out = containerd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.wms.v1",
            cmd,
            &format!("{id}-2"),
        ])
        .args(["/app.wasm", "exit", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // An HTTP component is served, as a one-component app on every path. The shim inherits
    // containerd's environment (here XDG_CACHE_HOME), but inside the container that path is
    // the image's, which could plant compiled code there: the shim neither reads nor writes a
    // code cache in the container (a volume at that path stays empty).
    let planted = tempfile::tempdir().unwrap();
    let at = format!(
        "type=bind,src={},dst={},options=rbind:rw",
        planted.path().display(),
        dir.join("home/cache").display()
    );
    let output = serve_once_with(&containerd, hello, &format!("{id}-3"), &["--mount", &at]);
    assert!(output.contains("Serving http://"), "{output}");
    let left: Vec<_> = std::fs::read_dir(planted.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "the shim used a code cache in the container: {left:?}"
    );
    // Their code is cached in containerd as a bundle's is: compiled once per image (the
    // command's plain tar layer, the app's gzip one), at the first start, which uses it
    // already; the second start of each compiles nothing.
    let compiles = || {
        containerd
            .log()
            .matches("precompiling layers for image")
            .count()
    };
    assert_eq!(compiles(), 2, "{}", containerd.log());
    assert!(output.contains("loaded precompiled code"), "{output}");
    let again = serve_once(&containerd, hello, &format!("{id}-4"));
    assert!(again.contains("loaded precompiled code"), "{again}");
    assert!(!again.contains("compiled in"), "{again}");
    let out = containerd
        .ctr_command(&["run", "--rm", "--runtime", "io.containerd.wms.v1"])
        .args(["--env", "WMS_LOG=debug", cmd, &format!("{id}-5")])
        .args(["/app.wasm", "args", "cached"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("loaded precompiled code for"), "{stderr}");
    assert_eq!(compiles(), 2, "compiled again:\n{}", containerd.log());
}

/// containerd's CRI service, as the kubelet drives it, on our own containerd's socket.
async fn cri_clients(
    socket: &Path,
) -> (
    k8s_cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    k8s_cri::v1::image_service_client::ImageServiceClient<tonic::transport::Channel>,
) {
    let socket = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .unwrap();
    (
        k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(channel.clone()),
        k8s_cri::v1::image_service_client::ImageServiceClient::new(channel),
    )
}

#[test]
fn the_kubelets_path_runs_a_pod_with_runtime_handler_wms() {
    use k8s_cri::v1::*;
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let shim = shim_binary();
    let registry = Registry::start();
    let reference = registry.reference("hello-pod:1");
    push_for_containerd(&examples("hello"), &reference);
    let pause = "localhost/wms-test/pause:1";
    // The CRI plugin on, as on a node: the `wms` handler, the local pause image as sandbox image,
    // the test registry over plain HTTP, an empty CNI directory (the pod uses the host's network),
    // OOM scores no lower than containerd's own (this machine withholds CAP_SYS_RESOURCE, which
    // the sandbox's -998 needs).
    let cri = format!(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{pause}\"\n  restrict_oom_score_adj = true\n  [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    bin_dir = \"{{dir}}/cni/bin\"\n    conf_dir = \"{{dir}}/cni/conf\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n    runtime_type = \"io.containerd.runc.v2\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wms]\n    runtime_type = \"io.containerd.wms.v1\"\n  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{reg}\"]\n    endpoint = [\"http://{reg}\"]\n",
        reg = registry.addr,
    );
    let containerd = Containerd::start_with(Some(&cri));
    let archive = pause_archive(containerd.dir.path(), pause);
    containerd.ctr_ok(&["-n", "k8s.io", "image", "import", archive.to_str().unwrap()]);

    let port = free_port();
    let logs = containerd.dir.path().join("pods");
    std::fs::create_dir_all(&logs).unwrap();
    let sandbox = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "hello".into(),
            uid: format!("uid-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let rt = rt();
    let (mut runtime, mut images) = rt.block_on(cri_clients(&containerd.socket));
    let (pod, container) = rt.block_on(async {
        images
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: reference.clone(),
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox.clone()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("PullImage: {e}\ncontainerd:\n{}", containerd.log()));
        let pod = runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox.clone()),
                runtime_handler: "wms".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\ncontainerd:\n{}", containerd.log()))
            .into_inner()
            .pod_sandbox_id;
        let container = runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: "hello".into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: reference.clone(),
                        ..Default::default()
                    }),
                    envs: vec![KeyValue {
                        key: "WMS_LISTEN".into(),
                        value: format!("127.0.0.1:{port}"),
                    }],
                    log_path: "hello.log".into(),
                    // A pod's `limits.memory`, as the kubelet passes it.
                    linux: Some(LinuxContainerConfig {
                        resources: Some(LinuxContainerResources {
                            memory_limit_in_bytes: 256 << 20,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\ncontainerd:\n{}", containerd.log()))
            .into_inner()
            .container_id;
        runtime
            .start_container(StartContainerRequest {
                container_id: container.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer: {e}\ncontainerd:\n{}", containerd.log()));
        (pod, container)
    });

    // The pod answers on the host's network.
    let log = || std::fs::read_to_string(logs.join("hello.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let got = rt.block_on(async {
            client()
                .get(format!("http://127.0.0.1:{port}/"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()
        });
        if let Some(body) = got {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the pod did not answer within 60 s; its log:\n{}\ncontainerd:\n{}",
            log(),
            containerd.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(body.trim_end(), "Hello from wms!");
    // The pod's memory limit is its cgroup's: it bounds the guests and the pool's budget.
    for line in [
        "container memory limit 256MiB: each guest may use at most 192MiB",
        "at most 16MiB (1/16 of the cgroup memory limit 256MiB)",
    ] {
        assert!(
            log().contains(line),
            "{line:?} not in the pod's log:\n{}",
            log()
        );
    }

    // As the kubelet stops a pod: the container with its grace period (SIGTERM), then the
    // sandbox (which kills what is left), then the sandbox is removed.
    rt.block_on(async {
        runtime
            .stop_container(StopContainerRequest {
                container_id: container.clone(),
                timeout: 30,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer: {e}\ncontainerd:\n{}", containerd.log()));
        runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\ncontainerd:\n{}", containerd.log()));
        runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\ncontainerd:\n{}", containerd.log()));
    });
    assert!(log().contains("SIGTERM received"), "{}", log());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let tasks = containerd.ctr_ok(&["-n", "k8s.io", "task", "ls", "-q"]);
        let containers = containerd.ctr_ok(&["-n", "k8s.io", "container", "ls", "-q"]);
        let stray = processes_of(&shim, &containerd.socket);
        if tasks.trim().is_empty() && containers.trim().is_empty() && stray.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind by the pod: tasks {tasks:?}, containers {containers:?}, shim processes {stray:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A WASI 0.3 component beside a 0.2 one in an app run by the shim: the same executors as
/// `wms up`, instance reuse included.
#[test]
fn an_app_with_a_wasi_03_component_is_served_with_reuse() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("wms.toml"),
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"mixed\"\n\
             [[trigger.http]]\nroute = \"/p3/...\"\ncomponent = \"p3\"\n\
             [[trigger.http]]\nroute = \"/p2/...\"\ncomponent = \"p2\"\n\
             [component.p3]\nsource = {:?}\n[component.p2]\nsource = {:?}\n",
            artifacts::P3KIT,
            artifacts::TESTKIT
        ),
    )
    .unwrap();
    let registry = Registry::start();
    let reference = registry.reference("mixed-containerd:1");
    push_for_containerd(app.path(), &reference);
    let containerd = Containerd::start();
    containerd.ctr_ok(&["image", "pull", "--plain-http", &reference]);

    let id = &format!("wms-shim-p3-{}", std::process::id());
    let (run, port) = start_serving(&containerd, &reference, id);
    let seen = rt().block_on(async {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let resp = client()
                .get(format!("http://127.0.0.1:{port}/p3/hello"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            seen.push(
                resp.headers()["x-instance-requests"]
                    .to_str()
                    .unwrap()
                    .to_string(),
            );
            assert_eq!(resp.text().await.unwrap(), "hello from p3\n");
        }
        let resp = client()
            .get(format!("http://127.0.0.1:{port}/p2/fine"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        seen
    });
    assert_eq!(seen, ["1", "2", "3"]);
    stop_serving(&containerd, id, run);
}
