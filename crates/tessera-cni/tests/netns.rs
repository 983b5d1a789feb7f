//! Root tests: Debian's `bridge`, `macvlan` and `ptp` plugins call `tessera-ipam` for two
//! pods, each in a network namespace this test creates, with the "host" side in another
//! namespace of its own. The pods exchange UDP datagrams; DEL removes the interfaces and
//! releases the addresses. No packet leaves the namespaces made here. Rootful Podman with its
//! CNI backend runs containers with `--ip` on a bridge network served by `tessera-ipam`.
//!
//! Outside CI, a machine without root or without the plugins skips these tests with a printed
//! reason; under `CI=true` that is a failure.

mod common;

use std::fs::File;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{addr, guide_bridge_network, in_ci, wait_bounded, Att, Env, Run, PLUGIN};
use serde_json::{json, Value};

const PLUGIN_DIR: &str = "/usr/lib/cni";
const VERSIONS: [&str; 3] = ["0.3.1", "0.4.0", "1.0.0"];

/// Why these tests cannot run here, if they cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    for plugin in ["bridge", "macvlan", "ptp"] {
        if !Path::new(PLUGIN_DIR).join(plugin).exists() {
            return Some(format!(
                "{PLUGIN_DIR}/{plugin} is missing (apt-get install containernetworking-plugins)"
            ));
        }
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("the ip command is missing (apt-get install iproute2)".into());
    }
    None
}

/// True when the test may run; prints why not otherwise, and fails under CI.
fn prerequisites_met(test: &str) -> bool {
    can_run(test, missing_prerequisite())
}

/// True when nothing is `missing`; prints what is otherwise, and fails under CI.
fn can_run(test: &str, missing: Option<String>) -> bool {
    match missing {
        None => true,
        Some(reason) if in_ci() => panic!("{test}: cannot run under CI=true: {reason}"),
        Some(reason) => {
            // Straight to stderr: the test harness hides what passing tests print.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "skipping {test}: {reason}");
            false
        }
    }
}

/// Runs `ip ARGS`, failing the test with its error output.
fn ip(args: &[&str]) {
    let child = Command::new("ip")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ip");
    let out = wait_bounded(child, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `ip ARGS` succeeds.
fn ip_ok(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A network namespace that this test created and deletes when dropped, on success and on
/// panic alike (with everything inside it: bridges, veths, macvlans).
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "tsr{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `f` on a thread that entered this namespace; sockets it creates stay in it.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns on a valid namespace fd affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A store, a "host" namespace where the main plugin runs, and two pod namespaces.
struct Lab {
    env: Env,
    host: Netns,
    pods: [Netns; 2],
}

impl Lab {
    fn new() -> Self {
        Self {
            env: Env::new(),
            host: Netns::new("host"),
            pods: [Netns::new("pa"), Netns::new("pb")],
        }
    }

    /// Runs the main plugin inside the host namespace, as a runtime would on the node.
    fn plugin(&self, verb: &str, conf: &Value, pod: usize, cid: &str) -> common::Run {
        let main = conf["type"].as_str().expect("type");
        let plugin_dir = Path::new(PLUGIN).parent().expect("target dir");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host.name])
            .arg(Path::new(PLUGIN_DIR).join(main))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", self.pods[pod].path())
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME={cid}"),
            )
            .env(
                "CNI_PATH",
                format!("{}:{PLUGIN_DIR}", plugin_dir.to_str().expect("utf-8 path")),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.env.run_cmd(cmd, conf.to_string().as_bytes())
    }

    /// ADD through the main plugin; returns the result and the pod's IPv4 address.
    fn add(&self, conf: &Value, pod: usize, cid: &str) -> (Value, Ipv4Addr) {
        let run = self.plugin("ADD", conf, pod, cid);
        let result = run.ok().clone();
        let ip = result["ips"]
            .as_array()
            .expect("ips")
            .iter()
            .find_map(|i| addr(i["address"].as_str()?).parse::<Ipv4Addr>().ok())
            .expect("an IPv4 address");
        (result, ip)
    }
}

/// Sends a datagram from a socket in `from` to `to_ip` in `to` and back; retried while
/// neighbours resolve, bounded in count and time.
fn udp_round_trip(from: &Netns, to: &Netns, to_ip: Ipv4Addr) -> Result<(), String> {
    let server = to.run(|| UdpSocket::bind((to_ip, 0)));
    let server = server.map_err(|e| format!("bind {to_ip} in {}: {e}", to.name))?;
    let target = server.local_addr().map_err(|e| e.to_string())?;
    let client = from
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .map_err(|e| format!("bind in {}: {e}", from.name))?;
    let wait = Some(Duration::from_millis(200));
    server.set_read_timeout(wait).map_err(|e| e.to_string())?;
    client.set_read_timeout(wait).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let mut last = String::new();
    for _ in 0..25 {
        if let Err(e) = client.send_to(b"ping", target) {
            last = format!("send: {e}");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let Ok((n, peer)) = server.recv_from(&mut buf) else {
            last = "no datagram arrived".into();
            continue;
        };
        if &buf[..n] != b"ping" {
            return Err(format!("unexpected datagram {:?}", &buf[..n]));
        }
        server.send_to(b"pong", peer).map_err(|e| e.to_string())?;
        match client.recv_from(&mut buf) {
            Ok((n, src)) if &buf[..n] == b"pong" && src == target => return Ok(()),
            Ok(_) => last = "unexpected reply".into(),
            Err(e) => last = format!("no reply: {e}"),
        }
    }
    Err(format!(
        "no UDP round trip from {} to {to_ip} in {}: {last}",
        from.name, to.name
    ))
}

/// ADD two pods, exchange traffic both ways, CHECK, DEL twice: for one main plugin and
/// every version it is tested with.
fn exercise(lab: &Lab, conf_for: impl Fn(&str) -> Value, pool: &str, gateway: Option<&str>) {
    // A gateway held for the network stays through every DEL.
    let before = lab.env.handle_count();
    for version in VERSIONS {
        let conf = conf_for(version);
        let cids = [
            format!("a{}", version.replace('.', "")),
            format!("b{}", version.replace('.', "")),
        ];
        let (ra, ipa) = lab.add(&conf, 0, &cids[0]);
        let (rb, ipb) = lab.add(&conf, 1, &cids[1]);
        assert_ne!(ipa, ipb);
        let pool_net: ipnet::Ipv4Net = pool.parse().unwrap();
        assert!(
            pool_net.contains(&ipa) && pool_net.contains(&ipb),
            "{ra} {rb}"
        );
        assert_eq!(ra["cniVersion"], version);
        if let Some(gw) = gateway {
            assert_eq!(ra["ips"][0]["gateway"], gw, "{ra}");
        }
        udp_round_trip(&lab.pods[0], &lab.pods[1], ipb).unwrap();
        udp_round_trip(&lab.pods[1], &lab.pods[0], ipa).unwrap();
        if version != "0.3.1" {
            let mut check = conf.clone();
            check["prevResult"] = ra.clone();
            let run = lab.plugin("CHECK", &check, 0, &cids[0]);
            assert_eq!(
                run.status, 0,
                "CHECK {version}: {} {}",
                run.stdout, run.stderr
            );
        }
        assert_eq!(lab.env.handle_count(), before + 2);
        for (pod, cid) in cids.iter().enumerate() {
            for _ in 0..2 {
                let run = lab.plugin("DEL", &conf, pod, cid);
                assert_eq!(
                    run.status, 0,
                    "DEL {version}: {} {}",
                    run.stdout, run.stderr
                );
            }
            assert!(
                !ip_ok(&["-n", &lab.pods[pod].name, "link", "show", "eth0"]),
                "DEL left eth0 in {}",
                lab.pods[pod].name
            );
        }
        assert_eq!(lab.env.handle_count(), before, "DEL released every address");
        lab.env.assert_consistent();
    }
}

#[test]
fn bridge_with_gateway_connects_two_pods() {
    if !prerequisites_met("bridge_with_gateway_connects_two_pods") {
        return;
    }
    let lab = Lab::new();
    lab.env.pool("br", "10.91.0.0/24", 26, json!({}));
    // The bridge takes the first address as its gateway; it must never go to a pod.
    lab.env.reserve("br-gateway", &["10.91.0.1"]);
    let db = lab.env.db().to_str().unwrap().to_string();
    let conf_for = |version: &str| {
        json!({"cniVersion": version, "name": "tsr-bridge", "type": "bridge",
               "bridge": "tsrbr0", "isGateway": true, "ipMasq": false,
               "ipam": {"type": "tessera-ipam", "datastore": db, "nodename": "node-a"}})
    };
    // The pods reach the gateway the bridge configured from the result.
    let (_, ip) = lab.add(&conf_for("1.0.0"), 0, "gw-probe");
    let (host, pod) = (&lab.host, &lab.pods[0]);
    udp_round_trip(pod, host, "10.91.0.1".parse().unwrap()).unwrap();
    udp_round_trip(host, pod, ip).unwrap();
    assert_eq!(
        lab.plugin("DEL", &conf_for("1.0.0"), 0, "gw-probe").status,
        0
    );
    exercise(&lab, conf_for, "10.91.0.0/24", Some("10.91.0.1"));
}

#[test]
fn the_guide_bridge_network_works_on_an_empty_store() {
    if !prerequisites_met("the_guide_bridge_network_works_on_an_empty_store") {
        return;
    }
    let lab = Lab::new();
    // The guide's pool and conflist, as printed: no reservation for the gateway.
    let bridge = guide_bridge_network(&lab.env);
    let conf_for = |version: &str| {
        let mut conf = bridge.clone();
        conf["cniVersion"] = json!(version);
        conf
    };
    let (ra, ipa) = lab.add(&conf_for("1.0.0"), 0, "readme-a");
    let (_, ipb) = lab.add(&conf_for("1.0.0"), 1, "readme-b");
    assert_eq!(ra["ips"][0]["gateway"], "10.22.0.1", "{ra}");
    let gateway: Ipv4Addr = "10.22.0.1".parse().unwrap();
    assert!(![ipa, ipb].contains(&gateway), "a pod got the gateway");
    // The pods reach each other and the gateway the bridge put on cni0.
    udp_round_trip(&lab.pods[0], &lab.pods[1], ipb).unwrap();
    udp_round_trip(&lab.pods[1], &lab.pods[0], ipa).unwrap();
    for pod in &lab.pods {
        udp_round_trip(pod, &lab.host, gateway).unwrap();
    }
    for (pod, cid) in ["readme-a", "readme-b"].iter().enumerate() {
        assert_eq!(lab.plugin("DEL", &conf_for("1.0.0"), pod, cid).status, 0);
    }
    let held = lab
        .env
        .ipam()
        .handle("pods:gateway")
        .unwrap()
        .expect("held");
    assert_eq!(held.addresses[0].ip.to_string(), "10.22.0.1");
    exercise(&lab, conf_for, "10.22.0.0/16", Some("10.22.0.1"));
}

#[test]
fn macvlan_on_a_veth_parent_connects_two_pods() {
    if !prerequisites_met("macvlan_on_a_veth_parent_connects_two_pods") {
        return;
    }
    let lab = Lab::new();
    let host = lab.host.name.clone();
    // The parent is one end of a veth pair inside the test's host namespace.
    ip(&[
        "-n", &host, "link", "add", "tsrpar0", "type", "veth", "peer", "name", "tsrpar1",
    ]);
    ip(&["-n", &host, "link", "set", "tsrpar0", "up"]);
    ip(&["-n", &host, "link", "set", "tsrpar1", "up"]);
    lab.env.pool("mv", "10.92.0.0/24", 26, json!({}));
    let db = lab.env.db().to_str().unwrap().to_string();
    let conf_for = |version: &str| {
        json!({"cniVersion": version, "name": "tsr-macvlan", "type": "macvlan",
               "master": "tsrpar0", "mode": "bridge",
               "ipam": {"type": "tessera-ipam", "datastore": db, "nodename": "node-a"}})
    };
    exercise(&lab, conf_for, "10.92.0.0/24", None);
}

#[test]
fn macvlan_with_a_spider_ippool_gives_fixed_range_addresses_that_talk() {
    if !prerequisites_met("macvlan_with_a_spider_ippool_gives_fixed_range_addresses_that_talk") {
        return;
    }
    let lab = Lab::new();
    let host = lab.host.name.clone();
    ip(&[
        "-n", &host, "link", "add", "tsrsp0", "type", "veth", "peer", "name", "tsrsp1",
    ]);
    ip(&["-n", &host, "link", "set", "tsrsp0", "up"]);
    ip(&["-n", &host, "link", "set", "tsrsp1", "up"]);
    // A firewall-approved range inside a larger subnet, with the router's address as the
    // gateway and a route to another site through a second router.
    lab.env.apply(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
        "metadata": {"name": "fixed-v4"},
        "spec": {"ipVersion": 4, "subnet": "10.94.0.0/16", "ips": ["10.94.7.20-10.94.7.29"],
                 "excludeIPs": ["10.94.7.20"], "gateway": "10.94.0.1",
                 "routes": [{"dst": "10.95.0.0/16", "gw": "10.94.0.254"}]}
    }));
    let db = lab.env.db().to_str().unwrap().to_string();
    let conf_for = |version: &str| {
        json!({"cniVersion": version, "name": "tsr-spider", "type": "macvlan",
               "master": "tsrsp0", "mode": "bridge",
               "ipam": {"type": "tessera-ipam", "datastore": db, "nodename": "node-a"},
               "runtimeConfig": {"io.kubernetes.cri.pod-annotations":
                   {"ipam.spidernet.io/ippool": "{\"ipv4\": [\"fixed-v4\"]}"}}})
    };
    let (result, ip) = lab.add(&conf_for("1.0.0"), 0, "route-probe");
    assert_eq!(result["ips"][0]["gateway"], "10.94.0.1", "{result}");
    assert!(result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .ends_with("/16"));
    // macvlan configured the pool's gateway and routes in the pod.
    let routes = Command::new("ip")
        .args(["-n", &lab.pods[0].name, "-4", "route", "show"])
        .output()
        .expect("ip route");
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(routes.contains("default via 10.94.0.1"), "{routes}");
    assert!(routes.contains("10.95.0.0/16 via 10.94.0.254"), "{routes}");
    let fixed = |ip: Ipv4Addr| {
        let last = ip.octets()[3];
        ip.octets()[..3] == [10, 94, 7] && (21..=29).contains(&last)
    };
    assert!(fixed(ip), "{ip} is outside 10.94.7.21-29");
    assert_eq!(
        lab.plugin("DEL", &conf_for("1.0.0"), 0, "route-probe")
            .status,
        0
    );
    exercise(&lab, conf_for, "10.94.7.16/28", Some("10.94.0.1"));
}

#[test]
fn ptp_routes_between_two_pods_through_the_host() {
    if !prerequisites_met("ptp_routes_between_two_pods_through_the_host") {
        return;
    }
    let lab = Lab::new();
    lab.env.pool("pt", "10.93.0.0/24", 26, json!({}));
    lab.env.reserve("pt-gateway", &["10.93.0.1"]);
    let db = lab.env.db().to_str().unwrap().to_string();
    let conf_for = |version: &str| {
        json!({"cniVersion": version, "name": "tsr-ptp", "type": "ptp", "ipMasq": false,
               "ipam": {"type": "tessera-ipam", "datastore": db, "nodename": "node-a"}})
    };
    exercise(&lab, conf_for, "10.93.0.0/24", Some("10.93.0.1"));
}

#[test]
fn namespaces_are_removed_when_a_test_fails() {
    if !prerequisites_met("namespaces_are_removed_when_a_test_fails") {
        return;
    }
    let name = std::panic::catch_unwind(|| {
        let ns = Netns::new("boom");
        let name = ns.name.clone();
        assert!(ip_ok(&["netns", "pids", &name]));
        std::panic::panic_any(name);
    })
    .expect_err("the closure panics")
    .downcast::<String>()
    .expect("namespace name");
    assert!(
        !Path::new("/run/netns").join(name.as_str()).exists(),
        "namespace {name} survived the panic"
    );
}

/// Runs `verb` for `att` with `conf` in a UTS namespace of its own whose host name is `host`
/// (written to the kernel directly: the `hostname` tool refuses names such as `node_a`).
fn with_host_name(env: &Env, host: &str, verb: &str, conf: &Value, att: &Att) -> Run {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--uts",
        "sh",
        "-c",
        "printf %s \"$1\" > /proc/sys/kernel/hostname && exec \"$2\"",
        "sh",
        host,
        PLUGIN,
    ])
    .env_clear()
    .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
    .env("CNI_COMMAND", verb)
    .env("CNI_CONTAINERID", &att.cid)
    .env("CNI_IFNAME", &att.ifname)
    .env("CNI_NETNS", &att.netns)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    env.run_cmd(cmd, conf.to_string().as_bytes())
}

#[test]
fn the_host_name_is_lower_cased_and_must_be_a_node_name() {
    if !prerequisites_met("the_host_name_is_lower_cased_and_must_be_a_node_name") {
        return;
    }
    let env = Env::new();
    env.pool("p", "10.94.0.0/24", 28, json!({}));
    let mut conf = env.conf("1.0.0", json!({}));
    let ipam = conf["ipam"].as_object_mut().unwrap();
    ipam.remove("nodename");
    ipam.insert(
        "nodename_file".into(),
        json!(env.dir().join("absent").to_str().unwrap()),
    );
    let att = Att::new("c1");
    with_host_name(&env, "Node-A.Example.COM", "ADD", &conf, &att).ok();
    let handle = env.ipam().handle("tnet:c1:eth0").unwrap().expect("held");
    assert_eq!(handle.attrs.node.as_deref(), Some("node-a.example.com"));
    let run = with_host_name(&env, "node_a", "ADD", &conf, &Att::new("c2"));
    assert!(
        run.err(7).starts_with(
            "the host name in /proc/sys/kernel/hostname, lower-cased: node name \"node_a\" is \
             not valid: '_' is not allowed;"
        ),
        "{}",
        run.stdout
    );
    assert_eq!(env.handle_count(), 1);
    env.assert_consistent();
}

/// Why the Podman test cannot run here, if it cannot.
fn podman_missing() -> Option<String> {
    if let Some(reason) = missing_prerequisite() {
        return Some(reason);
    }
    for (tool, package) in [
        ("podman", "podman"),
        ("runc", "runc"),
        ("nsenter", "util-linux"),
        ("timeout", "coreutils"),
    ] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("{tool} is missing (apt-get install {package})"));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox is missing (apt-get install busybox-static)".into());
    }
    None
}

/// Rootful Podman with its CNI backend, kept to a temporary directory: its own
/// containers.conf, storage, file locks, network configurations, and plugin directories
/// (the test binary's, then Debian's). It runs inside a network namespace of the test, so
/// the bridge it makes there goes away with the namespace. Dropping it removes its
/// containers (which releases their addresses and deletes their namespaces), then every
/// file.
struct Podman {
    ns: Netns,
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = dir.path();
        for sub in ["net.d", "storage", "run", "tmp", "rootfs/bin"] {
            std::fs::create_dir_all(root.join(sub)).expect("podman directory");
        }
        let plugin_dir = Path::new(PLUGIN).parent().expect("target dir");
        let at = |sub: &str| root.join(sub).to_str().expect("utf-8 path").to_string();
        // runc rather than crun: crun refuses hosts whose cgroup v2 hierarchy has
        // controllers next to v1 ones (hybrid mode). Podman raises a rootful container's
        // open-file and process limits to the maximum, which hosts that are containers
        // themselves refuse; busybox needs little.
        let conf = format!(
            "[containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [{:?}, {PLUGIN_DIR:?}]\n\
             network_config_dir = {:?}\n\
             [engine]\n\
             runtime = \"runc\"\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"none\"\n\
             lock_type = \"file\"\n\
             tmp_dir = {:?}\n\
             static_dir = {:?}\n\
             volume_path = {:?}\n",
            plugin_dir.to_str().expect("utf-8 path"),
            at("net.d"),
            at("tmp"),
            at("storage/libpod"),
            at("storage/volumes"),
        );
        std::fs::write(root.join("containers.conf"), conf).expect("containers.conf");
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {:?}\nrunroot = {:?}\n",
            at("storage"),
            at("run")
        );
        std::fs::write(root.join("storage.conf"), storage).expect("storage.conf");
        let podman = Self {
            ns: Netns::new("podman"),
            dir,
        };
        std::fs::copy("/bin/busybox", podman.dir.path().join("rootfs/bin/busybox"))
            .expect("copy busybox");
        podman
    }

    /// `podman ARGS` in the test's namespace with the test's configuration, bounded in time
    /// even when run from `drop`.
    fn command(&self, args: &[&str]) -> Command {
        let root = self.dir.path();
        let mut cmd = Command::new("timeout");
        cmd.args([
            "120",
            "nsenter",
            &format!("--net={}", self.ns.path()),
            "podman",
        ])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CONTAINERS_CONF", root.join("containers.conf"))
        .env("CONTAINERS_STORAGE_CONF", root.join("storage.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        cmd
    }

    /// Runs `podman ARGS`; returns whether it succeeded, its stdout and its stderr.
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let child = self.command(args).spawn().expect("run podman");
        let out = wait_bounded(child, Duration::from_secs(150));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `podman ARGS`, which must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args);
        assert!(ok, "podman {args:?} failed: {stderr}");
        stdout
    }

    /// What the containers run: a root file system holding a statically linked busybox and
    /// nothing else, used in place (`--rootfs`), as no registry is reachable from the test
    /// machines and an image import would write to the host's image cache.
    fn rootfs(&self) -> String {
        let path = self.dir.path().join("rootfs");
        path.to_str().expect("utf-8 path").to_string()
    }

    /// Writes the configuration list of a network into Podman's configuration directory.
    fn network(&self, conflist: &Value) {
        let name = conflist["name"].as_str().expect("network name");
        let path = self
            .dir
            .path()
            .join("net.d")
            .join(format!("{name}.conflist"));
        std::fs::write(path, conflist.to_string()).expect("write conflist");
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .command(&["rm", "--all", "--force", "--time", "0"])
            .status();
        // Nothing is left mounted in the storage once its containers are gone; should a
        // failed run have left something, it is detached before the directory is removed.
        let root = self.dir.path().to_str().unwrap_or_default().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for point in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
            if point.starts_with(&root) {
                let _ = Command::new("umount").args(["-l", point]).status();
            }
        }
    }
}

#[test]
fn podman_run_ip_gets_its_address_from_tessera() {
    if !can_run(
        "podman_run_ip_gets_its_address_from_tessera",
        podman_missing(),
    ) {
        return;
    }
    let env = Env::new();
    env.pool("pm", "10.124.0.0/24", 26, json!({}));
    env.reserve("pm-gateway", &["10.124.0.1"]);
    let podman = Podman::new();
    let backend = podman.ok(&["info", "--format", "{{.Host.NetworkBackend}}"]);
    assert_eq!(backend.trim(), "cni", "Podman must use its CNI backend");
    podman.network(&json!({
        "cniVersion": "1.0.0", "name": "tsr-podman",
        "plugins": [{"type": "bridge", "bridge": "tsrpm0", "isGateway": true, "ipMasq": false,
                     "ipam": {"type": "tessera-ipam", "datastore": env.db(),
                              "nodename": "node-a"}}]
    }));
    let rootfs = podman.rootfs();
    // `podman run --rootfs --name NAME --network tsr-podman --ip IP FLAGS ROOTFS busybox ARGS`
    let run = |name: &str, ip: &str, flags: &[&str], busybox: &[&str]| {
        let mut args = vec!["run", "--rootfs", "--name", name, "--network", "tsr-podman"];
        args.extend(["--ip", ip]);
        args.extend_from_slice(flags);
        args.extend([rootfs.as_str(), "/bin/busybox"]);
        args.extend_from_slice(busybox);
        podman.run(&args)
    };

    // Podman passes `--ip` as CNI_ARGS IP=…; the container gets exactly that address.
    let show = ["ip", "-4", "addr", "show", "eth0"];
    let (ok, out, err) = run("probe", "10.124.0.200", &["--rm"], &show);
    assert!(ok, "podman run failed: {err}");
    assert!(out.contains("inet 10.124.0.200/24"), "{out}");
    assert_eq!(env.handle_count(), 0, "--rm released the address");

    // A running container holds it under its attachment, named after the container.
    let (ok, _, err) = run("web", "10.124.0.201", &["-d"], &["sleep", "120"]);
    assert!(ok, "podman run -d failed: {err}");
    let cid = podman.ok(&["inspect", "--format", "{{.Id}}", "web"]);
    let info = env
        .ipam()
        .lookup("10.124.0.201".parse().unwrap())
        .unwrap()
        .and_then(|i| i.allocation)
        .expect("10.124.0.201 is held");
    assert_eq!(info.handle, format!("tsr-podman:{}:eth0", cid.trim()));
    assert_eq!(info.attrs.pod.as_deref(), Some("web"));

    // An address no pool holds, or one held already: Podman reports tessera's error and
    // nothing is allocated.
    for (name, ip, why) in [
        (
            "outside",
            "10.125.0.9",
            "address 10.125.0.9 is not in any IP pool",
        ),
        (
            "taken",
            "10.124.0.201",
            "address 10.124.0.201 is already in use by handle",
        ),
    ] {
        let (ok, _, err) = run(name, ip, &["--rm"], &["true"]);
        assert!(!ok, "podman run --ip {ip} succeeded");
        assert!(err.contains(why), "{err}");
    }
    assert_eq!(env.handle_count(), 1);

    podman.ok(&["rm", "--force", "--time", "0", "web"]);
    assert_eq!(
        env.handle_count(),
        0,
        "removing the container released its address"
    );
    env.assert_consistent();
}
