//! `wasi:sockets` through the real `wms up`: a Spin SDK 5 guest built for wasm32-wasip2
//! (`guests/spin-net`, whose std::net is wasi:sockets) against a TCP and a UDP echo server on
//! loopback in the test process. TCP, UDP and name lookups go only where the component's
//! `allowed_outbound_hosts` allows (`tcp://`, `udp://`, `*://`; addresses, CIDR ranges, names);
//! a host name or `*` never reaches the node itself; nothing listens.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::harness::{Server, artifacts, client, rt};

/// A TCP server on loopback answering `echo:` and what it read; counts its connections.
fn tcp_echo() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            seen.fetch_add(1, Ordering::SeqCst);
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let _ = s.write_all(b"echo:");
            let _ = s.write_all(&got);
        }
    });
    (port, count)
}

/// A UDP server on loopback answering each datagram with `echo:` and its content; counts them.
fn udp_echo() -> (u16, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from);
        }
    });
    (port, count)
}

/// An app of spin-net components, one per `(name, allowed_outbound_hosts entries)`, each at
/// `/NAME/...`.
fn app(components: &[(&str, Vec<String>)]) -> String {
    let mut m = String::from("spin_manifest_version = 2\n[application]\nname = \"net\"\n");
    for (name, allowed) in components {
        m.push_str(&format!(
            "[[trigger.http]]\nroute = \"/{name}/...\"\ncomponent = \"{name}\"\n[component.{name}]\nsource = {:?}\nallowed_outbound_hosts = {allowed:?}\n",
            artifacts::SPIN_NET
        ));
    }
    m
}

fn get(server: &Server, path: &str) -> (u16, String) {
    rt().block_on(async {
        let r = client().get(server.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

/// Asserts the guest's call was refused with access denied.
#[track_caller]
fn assert_denied((status, body): (u16, String)) {
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("PermissionDenied"), "guest saw: {body}");
}

#[test]
fn tcp_and_udp_reach_only_what_allowed_outbound_hosts_allows() {
    let (tcp, tcp_seen) = tcp_echo();
    let (udp, udp_seen) = udp_echo();
    let manifest = app(&[
        (
            "exact",
            vec![
                format!("tcp://127.0.0.1:{tcp}"),
                format!("udp://127.0.0.1:{udp}"),
            ],
        ),
        ("tcponly", vec![format!("tcp://127.0.0.1:{tcp}")]),
        // `*://` is both; a CIDR range names the addresses in it.
        (
            "cidr",
            vec![
                format!("*://127.0.0.0/8:{tcp}"),
                format!("udp://127.0.0.0/24:{udp}"),
            ],
        ),
        (
            "elsewhere",
            vec![
                format!("*://10.0.0.0/8:{tcp}"),
                format!("*://10.0.0.0/8:{udp}"),
            ],
        ),
        ("nothing", vec![]),
        // Port ranges, the end excluded.
        (
            "range",
            vec![format!("tcp://127.0.0.1:{}..{}", tcp, tcp + 1)],
        ),
    ]);
    let server = Server::with_manifest(&manifest, &[]);

    assert_eq!(
        get(&server, &format!("/exact/tcp/127.0.0.1:{tcp}")),
        (200, "echo:ping".into())
    );
    assert_eq!(
        get(&server, &format!("/exact/udp/127.0.0.1:{udp}")),
        (200, "echo:ping".into())
    );
    assert_eq!(
        get(&server, &format!("/cidr/tcp/127.0.0.1:{tcp}")),
        (200, "echo:ping".into())
    );
    assert_eq!(
        get(&server, &format!("/cidr/udp/127.0.0.1:{udp}")),
        (200, "echo:ping".into())
    );
    assert_eq!(
        get(&server, &format!("/range/tcp/127.0.0.1:{tcp}")),
        (200, "echo:ping".into())
    );
    assert_eq!(tcp_seen.load(Ordering::SeqCst), 3);
    assert_eq!(udp_seen.load(Ordering::SeqCst), 2);

    // The wrong port, the wrong protocol, an address outside the range, no entry at all.
    let other = tcp.wrapping_add(1).max(1);
    assert_denied(get(&server, &format!("/exact/tcp/127.0.0.1:{other}")));
    let log = server.wait_for_log(&format!("TCP connection to 127.0.0.1:{other} denied"));
    assert!(log.contains("component=exact"), "{log}");
    assert!(
        log.contains(&format!(
            "no allowed_outbound_hosts entry allows tcp://127.0.0.1:{other}"
        )),
        "{log}"
    );
    assert_denied(get(&server, &format!("/exact/tcp/127.0.0.1:{udp}")));
    assert_denied(get(&server, &format!("/range/tcp/127.0.0.1:{}", tcp + 1)));
    assert_denied(get(&server, &format!("/tcponly/udp/127.0.0.1:{udp}")));
    server.wait_for_log(
        "creating a UDP socket denied: no allowed_outbound_hosts entry has scheme `udp` or `*`",
    );
    assert_denied(get(&server, &format!("/elsewhere/tcp/127.0.0.1:{tcp}")));
    assert_denied(get(&server, &format!("/elsewhere/udp/127.0.0.1:{udp}")));
    server.wait_for_log(&format!("UDP datagram to 127.0.0.1:{udp} denied"));
    assert_denied(get(&server, &format!("/nothing/tcp/127.0.0.1:{tcp}")));
    server.wait_for_log("creating a TCP socket denied");
    assert_eq!(
        tcp_seen.load(Ordering::SeqCst),
        3,
        "a denied connection reached the server"
    );
    assert_eq!(
        udp_seen.load(Ordering::SeqCst),
        2,
        "a denied datagram reached the server"
    );

    // Logged once per component and address, however often the guest tries.
    assert_denied(get(&server, &format!("/exact/tcp/127.0.0.1:{other}")));
    let needle = format!("TCP connection to 127.0.0.1:{other} denied");
    let log = server.wait_for_log(&needle);
    let lines = log
        .lines()
        .filter(|l| l.contains(&needle) && l.contains("component=exact"))
        .count();
    assert_eq!(lines, 1, "{log}");
}

#[test]
fn a_name_or_wildcard_cannot_reach_the_node_and_nothing_listens() {
    let (tcp, tcp_seen) = tcp_echo();
    let manifest = app(&[
        // A name that resolves to loopback, and a wildcard host: neither names the address.
        ("byname", vec![format!("tcp://localhost:{tcp}")]),
        ("any", vec![format!("tcp://*:{tcp}")]),
        (
            "both",
            vec![
                format!("tcp://localhost:{tcp}"),
                format!("tcp://127.0.0.1:{tcp}"),
            ],
        ),
    ]);
    let server = Server::with_manifest(&manifest, &[]);

    // The lookup of an allowed name works; connecting to its loopback address does not.
    let (status, body) = get(&server, "/byname/lookup/localhost");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.lines().any(|l| l == "127.0.0.1" || l == "::1"),
        "{body}"
    );
    assert_denied(get(&server, &format!("/byname/tcp/localhost:{tcp}")));
    let log = server.wait_for_log("localhost resolves to");
    assert!(log.contains("a loopback address"), "{log}");
    assert_denied(get(&server, &format!("/any/tcp/127.0.0.1:{tcp}")));
    server.wait_for_log("127.0.0.1 is a loopback address");
    assert_eq!(
        tcp_seen.load(Ordering::SeqCst),
        0,
        "a denied connection reached the server"
    );
    // With an entry naming the address, the name works too.
    assert_eq!(get(&server, &format!("/both/tcp/localhost:{tcp}")).0, 200);

    // Lookups only of names an entry matches: nothing leaves in a name of the guest's choosing.
    let (status, body) = get(&server, "/byname/lookup/secret.example.com");
    assert_eq!(status, 502, "{body}");
    server.wait_for_log("name lookup of \"secret.example.com\" denied");

    // Nothing listens, on an address of its choosing or the OS's.
    assert_denied(get(&server, "/both/listen/127.0.0.1:0"));
    server.wait_for_log("TCP bind to 127.0.0.1:0 denied");
    assert_denied(get(&server, "/both/listen/0.0.0.0:0"));
    // (wasi-libc binds 0.0.0.0:0 first, which a client may; the listen on what the OS gave it
    // is refused.)
    server.wait_for_log("TCP listen on 0.0.0.0:");
}

/// Debian's redis-server on a free loopback port, in a temporary directory, stopped on drop.
struct Redis {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package; scripts/test installs it)");
        let redis = Redis {
            port,
            child,
            _dir: dir,
        };
        // Ready when it answers PING.
        let start = std::time::Instant::now();
        while redis.command(&["PING"]).as_deref() != Some("+PONG\r\n") {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        redis
    }

    /// One command in RESP; the raw reply, or `None` if the server cannot be reached.
    fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post(server: &Server, path: &str, body: &str) -> (u16, String) {
    rt().block_on(async {
        let r = client()
            .post(server.url(path))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

/// A spin-net component at `/NAME/...` allowed `allowed`, with variable `address`.
fn service_component(name: &str, allowed: &str, address: &str) -> String {
    format!(
        "[[trigger.http]]\nroute = \"/{name}/...\"\ncomponent = \"{name}\"\n[component.{name}]\nsource = {:?}\nallowed_outbound_hosts = [\"{allowed}\"]\n[component.{name}.variables]\naddress = \"{address}\"\n",
        artifacts::SPIN_NET
    )
}

/// A Spin SDK 7 component (Spin 3's packages) at `/NAME/...` allowed `allowed`.
fn sdk7_component(name: &str, allowed: &str) -> String {
    format!(
        "[[trigger.http]]\nroute = \"/{name}/...\"\ncomponent = \"{name}\"\n[component.{name}]\nsource = {:?}\nallowed_outbound_hosts = [\"{allowed}\"]\n",
        artifacts::SPIN3_VARS
    )
}

#[test]
fn spin_redis_reaches_only_an_allowed_redis_server() {
    let redis = Redis::start();
    let port = redis.port;
    let component = service_component;
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"redis\"\n{}{}{}",
        component(
            "ok",
            &format!("redis://127.0.0.1:{port}"),
            &format!("redis://127.0.0.1:{port}")
        ),
        component(
            "port",
            &format!("redis://127.0.0.1:{}", port + 1),
            &format!("redis://127.0.0.1:{port}")
        ),
        component(
            "byname",
            &format!("redis://localhost:{port}"),
            &format!("redis://localhost:{port}")
        ),
    ) + &sdk7_component("ok3", &format!("redis://127.0.0.1:{port}"))
        + &sdk7_component("port3", &format!("redis://127.0.0.1:{}", port + 1));
    let server = Server::with_manifest(&manifest, &[]);

    // Spin 3's package (SDK 7), allowed and denied alike.
    assert_eq!(
        post(
            &server,
            &format!("/ok3/redis?address=redis://127.0.0.1:{port}&key=three&value=v3"),
            ""
        ),
        (200, "v3".into())
    );
    assert_eq!(
        redis.command(&["GET", "three"]).as_deref(),
        Some("$2\r\nv3\r\n")
    );
    let (status, body) = post(
        &server,
        &format!("/port3/redis?address=redis://127.0.0.1:{port}&key=denied3&value=x"),
        "",
    );
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("denied"), "{body}");
    server.wait_for_log("component=port3");
    assert_eq!(
        redis.command(&["EXISTS", "denied3"]).as_deref(),
        Some(":0\r\n")
    );

    assert_eq!(
        post(&server, "/ok/redis/address/greeting", "hello"),
        (200, "hello".into())
    );
    // The value is in the real server.
    assert_eq!(
        redis.command(&["GET", "greeting"]).as_deref(),
        Some("$5\r\nhello\r\n")
    );

    let (status, body) = post(&server, "/port/redis/address/other", "x");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("denied"), "{body}");
    let log = server.wait_for_log(&format!("Redis connection to redis://127.0.0.1:{port} denied: no allowed_outbound_hosts entry allows redis://127.0.0.1:{port}"));
    assert!(log.contains("component=port"), "{log}");
    let (status, body) = post(&server, "/byname/redis/address/other", "x");
    assert_eq!(status, 502, "{body}");
    server.wait_for_log("localhost resolves to");
    assert_eq!(
        redis.command(&["EXISTS", "other"]).as_deref(),
        Some(":0\r\n")
    );

    // Regression (review): a reply was read whole, whatever its size. A value built up in the
    // server and read back: 1 MiB comes through; over 16 MiB fails the command, not the server.
    assert_eq!(
        post(&server, "/ok/redis-big/address/big/1048576", ""),
        (200, "1048576".into())
    );
    let (status, body) = post(&server, "/ok/redis-big/address/big/17000000", "");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("a reply of more than 16 MiB"), "{body}");
    assert_eq!(
        post(&server, "/ok/redis/address/greeting", "again"),
        (200, "again".into())
    );
}

/// Regression (review): a name lookup holds one of the server's blocking threads until the
/// resolver answers, and nothing counted them, so a guest could start lookups faster than a
/// slow resolver ends them and tie up the threads every guest's files and databases need. Now
/// an instance has at most 4 in progress and the process 32, counted until the resolver is done
/// (not when the guest drops them). The server gets a resolver that never answers: a UDP
/// socket on 127.0.0.2:53 named by a resolv.conf bound over /etc/resolv.conf in a mount
/// namespace of its own (root only, as CI runs).
#[test]
fn name_lookups_in_progress_are_capped_per_instance_and_per_process() {
    use std::os::unix::process::CommandExt as _;
    let _silent = UdpSocket::bind("127.0.0.2:53")
        .expect("binding 127.0.0.2:53 for a silent name server (this test needs root)");
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.2\noptions timeout:10 attempts:1\n",
    )
    .unwrap();
    let resolv = std::ffi::CString::new(resolv.to_str().unwrap()).unwrap();
    let manifest = app(&[("slow", vec!["tcp://*.slow.test:80".into()])]);
    let server = Server::with_manifest_runner(&manifest, &[], |cmd| {
        let resolv = resolv.clone();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let ok = |r: i32| {
                    if r == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                ok(libc::unshare(libc::CLONE_NEWNS))?;
                ok(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                ok(libc::mount(
                    resolv.as_ptr(),
                    c"/etc/resolv.conf".as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))
            });
        }
    });
    // Four at once from one instance; the fifth is refused.
    assert_eq!(
        get(&server, "/slow/lookups/slow.test/4"),
        (200, "started 4".into())
    );
    let (status, body) = get(&server, "/slow/lookups/slow.test/5");
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("lookup 4: ErrorCode") && body.contains("temporary-resolver-failure"),
        "{body}"
    );
    server.wait_for_log("the guest has 4 lookups in progress, its limit");
    // The lookups those instances dropped are still running: 8 so far; six more instances
    // bring the process to 32, and the next lookup is refused.
    for _ in 0..6 {
        assert_eq!(
            get(&server, "/slow/lookups/slow.test/4"),
            (200, "started 4".into())
        );
    }
    let (status, body) = get(&server, "/slow/lookups/slow.test/1");
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("lookup 0: ErrorCode") && body.contains("temporary-resolver-failure"),
        "{body}"
    );
    server.wait_for_log("guests have 32 lookups in progress, the process's limit");
    // The guest still runs (a request that looks nothing up).
    assert_eq!(get(&server, "/slow/none").0, 404);
    // Once the resolver gives up on them (10 s), lookups are free again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let (status, body) = get(&server, "/slow/lookups/slow.test/1");
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lookups were not freed: {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Debian's mosquitto on a free loopback port, anonymous, stopped on drop.
struct Mosquitto {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto (Debian's mosquitto package; scripts/test installs it)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Mosquitto {
            child,
            port,
            _dir: dir,
        }
    }

    /// A subscriber to `topic` (Debian's mosquitto_sub, `-d` so that it says when the broker
    /// has acknowledged the subscription) that takes the first message it gets; returned once
    /// subscribed.
    fn subscribe(&self, topic: &str) -> Subscriber {
        use std::io::BufRead as _;
        // Line-buffered (coreutils' stdbuf): its lines are read as they come, not at its exit.
        let mut child = std::process::Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-d", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(["-t", topic, "-C", "1", "-W", "60"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("mosquitto_sub (Debian's mosquitto-clients package; scripts/test installs it)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("received SUBACK") {
                    let _ = tx.send(());
                }
                sink.lock().unwrap().push(line);
            }
        });
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("mosquitto_sub was not subscribed within 30 s");
        Subscriber { child, lines }
    }
}

/// A running mosquitto_sub and the lines it printed.
struct Subscriber {
    child: std::process::Child,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Subscriber {
    /// Waits for the subscriber to exit (after its one message); its output lines.
    fn message_lines(mut self) -> Vec<String> {
        let _ = self.child.wait();
        std::thread::sleep(std::time::Duration::from_millis(100));
        self.lines.lock().unwrap().clone()
    }

    /// Stops it; its output lines.
    fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(std::time::Duration::from_millis(100));
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn spin_mqtt_publishes_only_to_an_allowed_broker() {
    let broker = Mosquitto::start();
    let port = broker.port;
    let component = service_component;
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"mqtt\"\n{}{}{}",
        component(
            "ok",
            &format!("mqtt://127.0.0.1:{port}"),
            &format!("mqtt://127.0.0.1:{port}?client_id=wms-test")
        ),
        component(
            "port",
            &format!("mqtt://127.0.0.1:{}", port + 1),
            &format!("mqtt://127.0.0.1:{port}")
        ),
        component(
            "byname",
            &format!("mqtt://localhost:{port}"),
            &format!("mqtt://localhost:{port}")
        ),
    ) + &sdk7_component("ok3", &format!("mqtt://127.0.0.1:{port}"))
        + &sdk7_component("port3", &format!("mqtt://127.0.0.1:{}", port + 1));
    let server = Server::with_manifest(&manifest, &[]);

    // Spin 3's package (SDK 7): delivered when allowed, nothing sent when not.
    let sub = broker.subscribe("wms/three");
    assert_eq!(
        post(
            &server,
            &format!(
                "/ok3/mqtt?address=mqtt://127.0.0.1:{port}&topic=wms/three&payload=from+sdk+7"
            ),
            ""
        ),
        (200, "published".into())
    );
    let lines = sub.message_lines();
    assert!(lines.iter().any(|l| l == "from sdk 7"), "{lines:?}");
    let sub = broker.subscribe("wms/denied3");
    let (status, body) = post(
        &server,
        &format!("/port3/mqtt?address=mqtt://127.0.0.1:{port}&topic=wms/denied3&payload=x"),
        "",
    );
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("denied"), "{body}");
    let lines = sub.stop();
    assert!(
        !lines.iter().any(|l| l.contains("received PUBLISH")),
        "{lines:?}"
    );

    // Allowed: the broker delivers the message to a real subscriber.
    let sub = broker.subscribe("wms/greeting");
    assert_eq!(
        post(&server, "/ok/mqtt/address/wms/greeting", "hello over mqtt"),
        (200, "published".into())
    );
    let lines = sub.message_lines();
    assert!(lines.iter().any(|l| l == "hello over mqtt"), "{lines:?}");

    // Denied: a port no entry allows, and the node itself through a name.
    let sub = broker.subscribe("wms/denied");
    let (status, body) = post(&server, "/port/mqtt/address/wms/denied", "x");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("denied"), "{body}");
    let log = server.wait_for_log(&format!(
        "MQTT connection to mqtt://127.0.0.1:{port} denied: no allowed_outbound_hosts entry allows mqtt://127.0.0.1:{port}"
    ));
    assert!(log.contains("component=port"), "{log}");
    let (status, body) = post(&server, "/byname/mqtt/address/wms/denied", "x");
    assert_eq!(status, 502, "{body}");
    server.wait_for_log("localhost resolves to");
    // Nothing reached the broker: the subscriber got no message.
    let lines = sub.stop();
    assert!(
        !lines.iter().any(|l| l.contains("received PUBLISH")),
        "{lines:?}"
    );
}

/// `max_outbound_connections` caps what all of a component's instances hold at once: while
/// one request holds a TCP connection, another instance of the component cannot open one; once
/// it is closed, it can.
#[test]
fn a_components_instances_share_its_max_outbound_connections() {
    use std::sync::atomic::AtomicBool;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(AtomicBool::new(false));
    {
        let (accepted, release) = (accepted.clone(), release.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { break };
                accepted.fetch_add(1, Ordering::SeqCst);
                let release = release.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let _ = s.read_to_end(&mut got);
                    while !release.load(Ordering::SeqCst) {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    let _ = s.write_all(b"held");
                });
            }
        });
    }
    let manifest = format!(
        "{}[component.capped.tool.wms]\nmax_outbound_connections = 1\n",
        app(&[("capped", vec![format!("tcp://127.0.0.1:{port}")])])
    );
    let server = Arc::new(Server::with_manifest(&manifest, &[]));
    let path = format!("/capped/tcp/127.0.0.1:{port}");
    let first = {
        let (server, path) = (server.clone(), path.clone());
        std::thread::spawn(move || get(&server, &path))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while accepted.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first connection never came"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Another instance of the component: refused while the first holds the only connection.
    let (status, body) = get(&server, &path);
    assert_eq!(status, 502, "{body}");
    server.wait_for_log(
        "the component's instances together hold 1 outbound connections, its max_outbound_connections",
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    release.store(true, Ordering::SeqCst);
    assert_eq!(first.join().unwrap(), (200, "held".into()));
    // Closed: the next request connects.
    assert_eq!(get(&server, &path), (200, "held".into()));
}

/// Debian's PostgreSQL server on a free loopback port, its cluster in a temporary directory
/// (initdb and postgres run as the `postgres` user the package creates; trust authentication),
/// stopped on drop.
struct Postgres {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Postgres {
    fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL (Debian's postgresql package; scripts/test installs it)")
            .flatten()
            .map(|e| e.path().join("bin"))
            .max()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let as_postgres = |program: &str| {
            let mut cmd = std::process::Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(bin.join(program));
            cmd
        };
        let status = std::process::Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let out = as_postgres("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = as_postgres("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pg = Postgres {
            child,
            port,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let ready = std::process::Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "postgres did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        pg
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // runuser passes SIGTERM on to postgres (a smart shutdown).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[test]
fn spin_postgres_reaches_only_an_allowed_server() {
    let pg = Postgres::start();
    let port = pg.port;
    let address = |host: &str| format!("host={host} port={port} user=postgres dbname=postgres");
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"pg\"\n{}{}{}",
        service_component(
            "ok",
            &format!("postgres://127.0.0.1:{port}"),
            &address("127.0.0.1")
        ),
        service_component(
            "port",
            &format!("postgres://127.0.0.1:{}", port + 1),
            &address("127.0.0.1")
        ),
        service_component(
            "byname",
            &format!("postgres://localhost:{port}"),
            &address("localhost")
        ),
    );
    let manifest = manifest
        + &sdk7_component("ok4", &format!("postgres://127.0.0.1:{port}"))
        + &sdk7_component("port4", &format!("postgres://127.0.0.1:{}", port + 1));
    let server = Server::with_manifest(&manifest, &[]);

    // Spin's 4.2 package (SDK 7): a value of every type it names goes in as a parameter and
    // comes back as itself; NULLs too.
    let conn = address("127.0.0.1").replace(' ', "+");
    let (status, body) = post(&server, &format!("/ok4/pg/types?address={conn}"), "");
    assert_eq!(status, 200, "{body}");
    for expected in [
        "b Boolean: Boolean(true) | DbNull",
        "i2 Int16: Int16(-2) | DbNull",
        "i4 Int32: Int32(40000) | DbNull",
        "i8 Int64: Int64(-5000000000) | DbNull",
        "f4 Floating32: Floating32(1.5) | DbNull",
        "f8 Floating64: Floating64(-2.25) | DbNull",
        "s Str: Str(\"héllo\") | DbNull",
        "bin Binary: Binary([0, 1, 255]) | DbNull",
        "d Date: Date((2024, 2, 29)) | DbNull",
        "t Time: Time((19, 5, 7, 123456000)) | DbNull",
        "dt Datetime: Datetime((1999, 12, 31, 23, 59, 59, 500000000)) | DbNull",
        // 1,700,000,000 s after the Unix epoch, in UTC.
        "ts Datetime: Datetime((2023, 11, 14, 22, 13, 20, 0)) | DbNull",
        "u Uuid: Uuid(\"67e55044-10b1-426f-9247-bb680e5fe0c8\") | DbNull",
        "n Decimal: Decimal(\"-12345.0678\") | DbNull",
        "r4 RangeInt32: RangeInt32((Some((1, RangeBoundKind::Inclusive)), Some((5, RangeBoundKind::Exclusive)))) | DbNull",
        "r8 RangeInt64: RangeInt64((Some((-3, RangeBoundKind::Inclusive)), None)) | DbNull",
        "rn RangeDecimal: RangeDecimal((Some((\"0.5\", RangeBoundKind::Inclusive)), Some((\"2.25\", RangeBoundKind::Exclusive)))) | DbNull",
        "a4 ArrayInt32: ArrayInt32([Some(1), None, Some(-3)]) | DbNull",
        "a8 ArrayInt64: ArrayInt64([Some(1099511627776)]) | DbNull",
        "an ArrayDecimal: ArrayDecimal([Some(\"1.5\"), None]) | DbNull",
        "ast ArrayStr: ArrayStr([Some(\"x\"), None, Some(\"z\")]) | DbNull",
        "iv Interval: Interval(Interval { micros: 1500000, days: 2, months: 3 }) | DbNull",
        "rows=1",
    ] {
        assert!(
            body.lines()
                .any(|l| l.replace("DbValue::", "").replace("DbDataType::", "") == expected),
            "no line `{expected}` in:\n{body}"
        );
    }
    // jsonb as the server writes the document back (here, as it was sent).
    let json = format!("{:?}", br#"{"a": [1, 2]}"#.to_vec());
    assert!(
        body.contains(&format!(
            "j DbDataType::Jsonb: DbValue::Jsonb({json}) | DbValue::DbNull"
        )),
        "{body}"
    );
    // The server's own error, with its SQLSTATE; and the allow-list as for every package.
    let (status, body) = post(
        &server,
        &format!("/ok4/pg/exec?address={conn}&sql=SELECT+nosuchcolumn"),
        "",
    );
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("DbError") && body.contains("42703"), "{body}");
    let (status, body) = post(
        &server,
        &format!("/port4/pg/exec?address={conn}&sql=SELECT+1"),
        "",
    );
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("ConnectionFailed") && body.contains("denied"),
        "{body}"
    );

    // Allowed: a table made, a row inserted with parameters (a NULL among them), read back.
    let (status, body) = post(&server, "/ok/pg/address", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "id|name|photo\nDbValue::Int32(1)|DbValue::Str(\"ann\")|DbValue::DbNull"
    );

    // Denied: a port no entry allows, and the node itself through a name.
    let (status, body) = post(&server, "/port/pg/address", "");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("denied"), "{body}");
    server.wait_for_log(&format!(
        "PostgreSQL connection to postgres://127.0.0.1:{port} denied: no allowed_outbound_hosts entry allows postgres://127.0.0.1:{port}"
    ));
    let (status, body) = post(&server, "/byname/pg/address", "");
    assert_eq!(status, 502, "{body}");
    server.wait_for_log("localhost resolves to");
    // Nothing more reached the server: one more row, from this request.
    let (status, body) = post(&server, "/ok/pg/address", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.lines().count(), 3, "{body}");

    // A result's values are capped at 16 MiB, and what the server sends for one statement at
    // 32 MiB (a row that large fails before the host holds it); the server keeps serving.
    assert_eq!(
        post(&server, "/ok/pg-big/address/1000000", ""),
        (200, "1000000".into())
    );
    let (status, body) = post(&server, "/ok/pg-big/address/20000000", "");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("more than 16777216 bytes"), "{body}");
    let (status, body) = post(&server, "/ok/pg-big/address/40000000", "");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("a reply of more than 32 MiB"), "{body}");
    assert_eq!(post(&server, "/ok/pg/address", "").0, 200);
}
