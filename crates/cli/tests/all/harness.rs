use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use wms_test_artifacts as artifacts;

pub const WMS: &str = env!("CARGO_BIN_EXE_wms");

/// Runs the board-profile subset against another `wms` binary (e.g. a cross build).
pub const ENV_TEST_BIN: &str = "WMS_TEST_BIN";
/// Command prefix for that binary, e.g. `qemu-riscv64 -cpu rv64,v=false -R 256G -L /usr/riscv64-linux-gnu`.
pub const ENV_TEST_RUNNER: &str = "WMS_TEST_RUNNER";

/// The `wms` under test and the emulator (if any) that runs it.
pub fn wms_command() -> Command {
    let bin = std::env::var(ENV_TEST_BIN).unwrap_or_else(|_| WMS.to_string());
    match std::env::var(ENV_TEST_RUNNER) {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut words = runner.split_whitespace();
            let mut cmd = Command::new(words.next().unwrap());
            cmd.args(words).arg(bin);
            cmd
        }
        _ => Command::new(bin),
    }
}

/// Whether the binary under test runs under an emulator (timings are then not meaningful).
pub fn emulated() -> bool {
    std::env::var(ENV_TEST_RUNNER).is_ok_and(|r| !r.trim().is_empty())
}

/// Extra time allowed for start-up and deadlines under emulation.
pub fn slack() -> Duration {
    if emulated() {
        Duration::from_secs(20)
    } else {
        Duration::ZERO
    }
}

/// A cache directory for this test process, so tests never touch the user's cache.
fn test_cache() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// A running `wms up`; killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener's address, when started with one (`Admin http://ADDR`).
    pub admin: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `wms up APP --listen 127.0.0.1:0 ARGS...` and waits for the bound address.
    pub fn start(app: &Path, args: &[&str]) -> Server {
        Self::start_in(app, args, None, &[], &|_| {})
    }

    /// Like [`Server::start`], with `configure` applied to the command before it is spawned
    /// (e.g. resource limits set in `pre_exec`).
    pub fn start_with_runner(
        app: &Path,
        args: &[&str],
        configure: impl Fn(&mut Command),
    ) -> Server {
        Self::start_in(app, args, None, &[], &configure)
    }

    /// Like [`Server::start`] with extra environment variables.
    pub fn start_with_env(app: &Path, args: &[&str], env: &[(&str, &Path)]) -> Server {
        Self::start_in(app, args, None, env, &|_| {})
    }

    /// Like [`Server::with_manifest`], with `configure` applied to the command before it is
    /// spawned.
    pub fn with_manifest_runner(
        manifest: &str,
        args: &[&str],
        configure: impl Fn(&mut Command),
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("wms.toml"), manifest).unwrap();
        let path = dir.path().to_path_buf();
        Self::start_in(&path, args, Some(dir), &[], &configure)
    }

    /// Starts a server for a manifest written into a temporary directory.
    pub fn with_manifest(manifest: &str, args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("wms.toml"), manifest).unwrap();
        let path = dir.path().to_path_buf();
        Self::start_in(&path, args, Some(dir), &[], &|_| {})
    }

    fn start_in(
        app: &Path,
        args: &[&str],
        dir: Option<tempfile::TempDir>,
        env: &[(&str, &Path)],
        configure: &dyn Fn(&mut Command),
    ) -> Server {
        let mut cmd = wms_command();
        configure(&mut cmd);
        let mut child = cmd
            .env("WMS_CACHE_DIR", test_cache())
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .arg("up")
            .arg(app)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("WMS_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wms");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Printed before `Serving`: known by the time the address is.
        let admin = Arc::new(Mutex::new(None));
        let admin_sink = admin.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some(addr) = line.trim().strip_prefix("Admin http://") {
                    *admin_sink.lock().unwrap() = Some(addr.parse::<SocketAddr>().unwrap());
                }
                if let Some(addr) = line.trim().strip_prefix("Serving http://") {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
                line.clear();
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60) + slack() * 6) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "wms did not print its address; log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        let admin = *admin.lock().unwrap();
        Server {
            child,
            addr,
            admin,
            log,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL on the admin listener (the server must have been started with one).
    pub fn admin_url(&self, path: &str) -> String {
        let admin = self.admin.expect("started without --admin-listen");
        format!("http://{admin}{path}")
    }

    /// Everything the server logged to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle` (10 s at most).
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_log_within(needle, Duration::from_secs(10))
    }

    /// Waits until the log contains `needle`, `within` at most.
    pub fn wait_for_log_within(&self, needle: &str, within: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(log) = self.log_containing(needle, start, within) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log if it contains `needle`; panics once `within` has passed since `start`.
    fn log_containing(&self, needle: &str, start: Instant, within: Duration) -> Option<String> {
        let log = self.log();
        if log.contains(needle) {
            return Some(log);
        }
        assert!(
            start.elapsed() < within,
            "log never contained {needle:?}:\n{log}"
        );
        None
    }

    /// Waits, inside a test's async block, until the log contains `needle` (20 s at most).
    /// Tests use it to know a guest has begun (the testkit's `/slow` and `/loop` say so) instead
    /// of sleeping a fixed time, which a loaded machine outlasts.
    pub async fn wait_for_log_async(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(log) = self.log_containing(needle, start, Duration::from_secs(20)) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets the descriptor limit (soft and hard) of the process `cmd` starts to `nofile`.
pub fn limit_descriptors(cmd: &mut Command, nofile: u64) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: nofile as libc::rlim_t,
                rlim_max: nofile as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A memory cgroup created below the test process's own (cgroup v2 or v1), removed on drop.
pub struct MemoryCgroup {
    dir: PathBuf,
    /// Its `cgroup.procs`: write a pid there to move that process in.
    pub procs: PathBuf,
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The processes in it are gone by now; a cgroup directory is removed with rmdir.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A child of this process's memory cgroup with a memory limit of `limit` bytes, or `None`
/// where cgroups cannot be written (not root, no memory controller).
pub fn child_memory_cgroup(limit: u64) -> Option<MemoryCgroup> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let name = format!("wms-test-{}-{}", std::process::id(), limit);
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (root, file) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else {
            continue;
        };
        let dir = Path::new(root)
            .join(path.trim_start_matches('/'))
            .join(&name);
        if std::fs::create_dir(&dir).is_err() {
            continue;
        }
        if std::fs::write(dir.join(file), limit.to_string()).is_err() {
            let _ = std::fs::remove_dir(&dir);
            continue;
        }
        return Some(MemoryCgroup {
            procs: dir.join("cgroup.procs"),
            dir,
        });
    }
    None
}

/// `wms up` of `manifest` in a new memory cgroup limited to `limit` bytes (returned with it, to
/// be dropped after the server). `None` only where cgroups cannot be written by a non-root user;
/// as root (CI) failing to make one fails the test, so it cannot pass without running.
pub fn serve_in_memory_cgroup(manifest: &str, limit: u64) -> Option<(Server, MemoryCgroup)> {
    let Some(cgroup) = child_memory_cgroup(limit) else {
        // SAFETY: geteuid has no preconditions.
        assert_ne!(
            unsafe { libc::geteuid() },
            0,
            "cannot create a memory cgroup as root: is the memory controller mounted?"
        );
        eprintln!("no writable memory cgroup for this user: skipped");
        return None;
    };
    let procs = cgroup.procs.clone();
    let server = Server::with_manifest_runner(manifest, &[], |cmd| run_in_cgroup(cmd, &procs));
    Some((server, cgroup))
}

/// Makes the process `cmd` starts join the cgroup whose `cgroup.procs` is `procs`.
pub fn run_in_cgroup(cmd: &mut Command, procs: &Path) {
    use std::os::unix::process::CommandExt as _;
    let procs = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: between fork and exec only open/write/close run (async-signal-safe); "0" moves
    // the writing process itself.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            libc::close(fd);
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Runs `wms ARGS...` to completion; returns (exit code, stdout, stderr).
pub fn wms(args: &[&str]) -> (i32, String, String) {
    let out = wms_command()
        .args(args)
        .env("WMS_CACHE_DIR", test_cache())
        .env("WMS_LOG", "info")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A manifest with one testkit component per `(name, route, extra component lines)`.
pub fn testkit_app(components: &[(&str, &str, &str)]) -> String {
    let mut m = String::from("spin_manifest_version = 2\n[application]\nname = \"testkit\"\n");
    for (name, route, _) in components {
        m.push_str(&format!(
            "[[trigger.http]]\nroute = \"{route}\"\ncomponent = \"{name}\"\n"
        ));
    }
    for (name, _, extra) in components {
        m.push_str(&format!(
            "[component.{name}]\nsource = {:?}\n{extra}\n",
            artifacts::TESTKIT
        ));
    }
    m
}

pub fn examples(name: &str) -> PathBuf {
    Path::new(artifacts::EXAMPLES_DIR).join(name)
}

/// Current resident memory of a process, from /proc.
pub fn rss(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Peak resident memory of a process, from /proc.
pub fn peak_rss(pid: i32) -> u64 {
    let mut s = String::new();
    std::fs::File::open(format!("/proc/{pid}/status"))
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// A `docker-registry` serving from a temporary directory; killed on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with(None)
    }

    /// With `user`/`password` as the only htpasswd entry (basic auth).
    pub fn start_with(credentials: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = credentials {
            let htpasswd = dir.path().join("htpasswd");
            let hash = bcrypt::hash(password, 4).unwrap();
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: wms-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker-registry is not installed: apt-get install docker-registry");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split(['"', ' ']).next().unwrap().to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("docker-registry did not say where it listens");
        Registry { child, addr, dir }
    }

    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }

    /// Where the registry keeps blob `digest` on disk.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
