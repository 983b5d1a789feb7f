//! Keeps `deploy/` honest: every manifest parses, each kustomization lists every file of its
//! directory, the RBAC grants exactly what each part needs, the controller's Deployment uses
//! only settings the real binary lists in `--help`, and the node DaemonSet mounts what the
//! installer script (images/install-cni.sh) reads.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const CONTROLLER: &str = env!("CARGO_BIN_EXE_tessera-controller");
const NAMESPACE: &str = "tessera-system";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

/// One document of a manifest file.
struct Manifest {
    file: String,
    doc: Value,
}

impl Manifest {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or_default()
    }
}

/// The files of a directory (not below it) that `kubectl apply -f` reads, sorted by name.
fn yaml_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| {
            [".yaml", ".yml", ".json"]
                .iter()
                .any(|ext| name.ends_with(ext))
        })
        .collect();
    names.sort();
    names
}

/// The directories of manifests, each with its `Kustomization`.
const DIRECTORIES: [&str; 3] = ["deploy", "deploy/crds", "deploy/etcd"];

/// Every document of every YAML file of `deploy/`, `deploy/crds/` and `deploy/etcd/` (each
/// directory's `Kustomization` has no extension, so `kubectl apply -f` skips it).
fn manifests() -> Vec<Manifest> {
    let mut all = Vec::new();
    for dir in DIRECTORIES {
        for name in yaml_files(&repo_path(dir)) {
            let file = format!("{dir}/{name}");
            for doc in parse_documents(&file) {
                all.push(Manifest {
                    file: file.clone(),
                    doc,
                });
            }
        }
    }
    all
}

fn parse_documents(file: &str) -> Vec<Value> {
    let text = fs::read_to_string(repo_path(file)).unwrap();
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{file} is not YAML: {e}"))
}

fn find<'a>(manifests: &'a [Manifest], kind: &str, name: &str) -> &'a Value {
    &manifests
        .iter()
        .find(|m| m.kind() == kind && m.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/"))
        .doc
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    pod_spec(workload)["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The container's environment variables with a plain value.
fn env_values(container: &Value) -> BTreeMap<&str, &str> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect()
}

/// The container's environment variables of any source.
fn env_names(container: &Value) -> BTreeSet<&str> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect()
}

/// The verbs granted per (API group, resource) by the rules of the given roles.
fn grants(roles: &[&Value]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in roles.iter().flat_map(|r| r["rules"].as_array().unwrap()) {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                granted
                    .entry((group.to_string(), resource.to_string()))
                    .or_default()
                    .extend(strings(&rule["verbs"]).into_iter().map(String::from));
            }
        }
    }
    granted
}

fn expected_grants(
    table: &[(&str, &str, &[&str])],
) -> BTreeMap<(String, String), BTreeSet<String>> {
    table
        .iter()
        .map(|(group, resource, verbs)| {
            (
                (group.to_string(), resource.to_string()),
                verbs.iter().map(|v| v.to_string()).collect(),
            )
        })
        .collect()
}

/// Asserts that `binding` gives `role` to the service account `account` of tessera-system.
fn assert_binds(binding: &Value, role_kind: &str, role: &str, account: &str) {
    assert_eq!(binding["roleRef"]["kind"], role_kind);
    assert_eq!(binding["roleRef"]["name"], role);
    let subjects = binding["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 1, "{binding}");
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], account);
    assert_eq!(subjects[0]["namespace"], NAMESPACE);
}

/// The `VAR=${VAR:-default}` settings of the installer script.
fn installer_defaults() -> BTreeMap<String, String> {
    let script = fs::read_to_string(repo_path("images/install-cni.sh")).unwrap();
    script
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once("=${")?;
            let default = rest.strip_prefix(name)?.strip_prefix(":-")?;
            Some((name.to_string(), default.strip_suffix('}')?.to_string()))
        })
        .collect()
}

/// What `tessera-controller --help` prints.
fn controller_help() -> String {
    let output = Command::new(CONTROLLER).arg("--help").output().unwrap();
    assert!(output.status.success(), "tessera-controller --help failed");
    String::from_utf8(output.stdout).unwrap()
}

/// The long flags the help lists: the first word of lines such as `  -h, --help` or
/// `      --listen <ADDR>`, not flags named in the prose.
fn listed_flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line
                .split_once(", ")
                .filter(|(short, _)| short.len() == 2)
                .map_or(line, |(_, long)| long);
            let flag = line.split([' ', '=']).next()?;
            (flag.starts_with("--") && flag.len() > 2).then(|| flag.to_string())
        })
        .collect()
}

#[test]
fn every_manifest_parses_and_names_its_kind_and_namespace() {
    let manifests = manifests();
    assert!(manifests.len() > 10, "deploy/ holds too few objects");
    let cluster_scoped = [
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
    ];
    for m in &manifests {
        let what = format!("{} in {}", m.doc, m.file);
        assert!(m.doc["apiVersion"].is_string(), "no apiVersion: {what}");
        assert!(!m.kind().is_empty(), "no kind: {what}");
        assert!(!m.name().is_empty(), "no metadata.name: {what}");
        let namespace = m.doc["metadata"]["namespace"].as_str();
        if cluster_scoped.contains(&m.kind()) {
            assert_eq!(namespace, None, "{what}");
        } else {
            assert_eq!(namespace, Some(NAMESPACE), "{what}");
        }
    }
}

#[test]
fn each_kustomization_lists_every_file_of_its_directory_in_order() {
    for dir in DIRECTORIES {
        let kustomization = &parse_documents(&format!("{dir}/Kustomization"))[0];
        let mut listed = strings(&kustomization["resources"]);
        if dir == "deploy" {
            // The CustomResourceDefinitions come first: the controller watches them.
            assert_eq!(
                listed.first(),
                Some(&"crds"),
                "deploy/Kustomization resources"
            );
            listed.remove(0);
        }
        let files = yaml_files(&repo_path(dir));
        assert_eq!(listed, files, "{dir}/Kustomization resources");
        for name in &files {
            assert!(
                name.as_bytes()[..2].iter().all(u8::is_ascii_digit),
                "{dir}/{name} has no number for `kubectl apply -f` to order it by"
            );
        }
    }
}

#[test]
fn the_controller_and_the_node_agent_get_exactly_the_access_they_need() {
    let manifests = manifests();
    let controller = grants(&[
        find(&manifests, "ClusterRole", "tessera-controller"),
        find(&manifests, "Role", "tessera-controller-lease"),
    ]);
    let read: &[&str] = &["get", "list", "watch"];
    let record: &[&str] = &["create", "patch"];
    // Pools and reservations from kubectl: read, hold a finalizer, write the status.
    let mirror: &[&str] = &["get", "list", "watch", "patch"];
    let status: &[&str] = &["patch"];
    // Workloads a drain restarts: read, and patched as `kubectl rollout restart` does.
    let restart: &[&str] = &["get", "list", "watch", "patch"];
    assert_eq!(
        controller,
        expected_grants(&[
            ("", "nodes", read),
            ("", "namespaces", read),
            ("", "pods", read),
            ("apps", "statefulsets", restart),
            ("apps", "deployments", restart),
            ("apps", "replicasets", read),
            ("apps", "daemonsets", restart),
            ("batch", "jobs", read),
            ("batch", "cronjobs", read),
            ("events.k8s.io", "events", record),
            ("spiderpool.spidernet.io", "spidersubnets", mirror),
            ("spiderpool.spidernet.io", "spiderippools", mirror),
            ("spiderpool.spidernet.io", "spiderreservedips", mirror),
            ("spiderpool.spidernet.io", "spidersubnets/status", status),
            ("spiderpool.spidernet.io", "spiderippools/status", status),
            (
                "spiderpool.spidernet.io",
                "spiderreservedips/status",
                status
            ),
            ("crd.projectcalico.org", "ippools", mirror),
            ("crd.projectcalico.org", "ipreservations", mirror),
            ("crd.projectcalico.org", "ippools/status", status),
            ("crd.projectcalico.org", "ipreservations/status", status),
            (
                "coordination.k8s.io",
                "leases",
                &["get", "create", "update", "patch"]
            ),
        ])
    );
    let node = grants(&[find(&manifests, "ClusterRole", "tessera-node")]);
    assert_eq!(
        node,
        expected_grants(&[
            ("", "pods", &["get"]),
            ("", "namespaces", &["get"]),
            ("batch", "jobs", &["get"])
        ])
    );
    // The lease role is the only one the controller gets in its namespace alone.
    let lease_role = find(&manifests, "Role", "tessera-controller-lease");
    assert_eq!(lease_role["metadata"]["namespace"], NAMESPACE);

    let bindings = [
        (
            "ClusterRoleBinding",
            "ClusterRole",
            "tessera-controller",
            "tessera-controller",
        ),
        (
            "RoleBinding",
            "Role",
            "tessera-controller-lease",
            "tessera-controller",
        ),
        (
            "ClusterRoleBinding",
            "ClusterRole",
            "tessera-node",
            "tessera-node",
        ),
    ];
    for (kind, role_kind, role, account) in bindings {
        assert_binds(find(&manifests, kind, role), role_kind, role, account);
        find(&manifests, "ServiceAccount", account);
    }
    let bound = manifests
        .iter()
        .filter(|m| m.kind().ends_with("Binding"))
        .count();
    assert_eq!(bound, bindings.len(), "a binding nobody checked");
}

#[test]
fn the_controller_deployment_uses_only_settings_the_binary_lists() {
    let manifests = manifests();
    let deployment = find(&manifests, "Deployment", "tessera-controller");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        pod_spec(deployment)["serviceAccountName"],
        "tessera-controller"
    );
    let controller = container(deployment, "controller");
    assert_eq!(strings(&controller["command"]), ["tessera-controller"]);

    let help = controller_help();
    let flags = listed_flags(&help);
    let mut listen = None;
    for arg in strings(&controller["args"]) {
        let (flag, value) = arg.split_once('=').unwrap_or((arg, ""));
        assert!(
            flags.contains(flag),
            "{arg} of the Deployment is not in tessera-controller --help: {flags:?}"
        );
        if flag == "--listen" {
            listen = Some(value.to_string());
        }
    }

    // Settings from the environment: the datastore ConfigMap's keys and the pod's own name
    // and namespace are variables the binary reads.
    let datastore = find(&manifests, "ConfigMap", "tessera-datastore");
    let commented = fs::read_to_string(repo_path("deploy/30-datastore.yaml")).unwrap();
    let commented_keys = commented.lines().filter_map(|line| {
        let key = line.trim().strip_prefix("# ")?.split_once(": ")?.0;
        key.starts_with("TESSERA_").then_some(key)
    });
    let data_keys = datastore["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str);
    for name in data_keys.chain(commented_keys).chain(
        env_names(controller)
            .into_iter()
            .filter(|n| *n != "RUST_LOG"),
    ) {
        assert!(
            help.contains(&format!("env: {name}")),
            "the Deployment sets {name}, which tessera-controller --help does not list"
        );
    }
    assert_eq!(
        controller["envFrom"][0]["configMapRef"]["name"],
        "tessera-datastore"
    );

    // Probes and the metrics port point at the port the controller listens on.
    let port: u64 = listen
        .as_deref()
        .unwrap_or("0.0.0.0:9094")
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    assert_eq!(port, 9094);
    assert_eq!(controller["ports"][0]["name"], "metrics");
    assert_eq!(controller["ports"][0]["containerPort"], port);
    assert_eq!(controller["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(controller["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(controller["readinessProbe"]["httpGet"]["port"], "metrics");
    let metrics = find(&manifests, "Service", "tessera-controller-metrics");
    assert_eq!(metrics["spec"]["ports"][0]["targetPort"], "metrics");

    // Non-root, read-only root file system, no privileges, bounded memory.
    let pod_security = &pod_spec(deployment)["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true);
    let security = &controller["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert!(controller["resources"]["limits"]["memory"].is_string());
    assert!(controller["resources"]["requests"]["cpu"].is_string());
}

#[test]
fn the_node_daemonset_mounts_what_the_installer_reads() {
    let manifests = manifests();
    let daemonset = find(&manifests, "DaemonSet", "tessera-node");
    let spec = pod_spec(daemonset);
    assert_eq!(spec["serviceAccountName"], "tessera-node");
    assert_eq!(spec["hostNetwork"], true);
    let installer = container(daemonset, "install-cni");
    assert_eq!(strings(&installer["command"]), ["tessera-install-cni"]);

    // Each path the script reads or writes: the DaemonSet's value, else the script's default.
    let defaults = installer_defaults();
    let env = env_values(installer);
    let setting = |name: &str| -> String {
        env.get(name)
            .map(|v| v.to_string())
            .or_else(|| defaults.get(name).cloned())
            .unwrap_or_else(|| panic!("the installer has no setting {name}"))
    };
    for name in env.keys() {
        assert!(
            defaults.contains_key(*name),
            "the DaemonSet sets {name}, which the installer does not read"
        );
    }
    let env_names = env_names(installer);
    assert!(env_names.contains("NODE_NAME"));
    assert_eq!(
        installer["envFrom"][0]["configMapRef"]["name"],
        "tessera-datastore"
    );

    let volumes: BTreeMap<&str, &Value> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let mounts: BTreeMap<&str, &str> = installer["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap(),
                m["name"].as_str().unwrap(),
            )
        })
        .collect();
    let volume_at = |path: &str| -> &Value {
        let name = mounts
            .get(path)
            .unwrap_or_else(|| panic!("nothing is mounted at {path}: {mounts:?}"));
        volumes[name]
    };

    // The host's CNI directories, the configuration one under the name the files inside it
    // carry.
    assert_eq!(
        volume_at(&setting("CNI_BIN_DIR"))["hostPath"]["path"],
        "/opt/cni/bin"
    );
    let net_dir = volume_at(&setting("CNI_NET_DIR"));
    assert_eq!(net_dir["hostPath"]["path"], setting("CNI_NET_DIR_ON_HOST"));

    // The template, from the ConfigMap that holds it.
    let template = PathBuf::from(setting("CNI_CONF_TEMPLATE"));
    let template_volume = volume_at(template.parent().unwrap().to_str().unwrap());
    let config_map = template_volume["configMap"]["name"].as_str().unwrap();
    let key = template.file_name().unwrap().to_str().unwrap();
    assert!(
        find(&manifests, "ConfigMap", config_map)["data"][key].is_string(),
        "ConfigMap {config_map} has no key {key}"
    );

    // The rotating token and the cluster CA.
    let account = volume_at(&setting("SERVICE_ACCOUNT_DIR"));
    let sources = account["projected"]["sources"].as_array().unwrap();
    let token = sources
        .iter()
        .find_map(|s| s.get("serviceAccountToken"))
        .expect("a projected serviceAccountToken");
    assert_eq!(token["path"], "token");
    assert!(token["expirationSeconds"].as_u64().unwrap() <= 3600 * 24);
    assert!(sources
        .iter()
        .any(|s| s["configMap"]["name"] == "kube-root-ca.crt"
            && s["configMap"]["items"][0]["path"] == "ca.crt"));

    // The etcd TLS files of the datastore ConfigMap, in both pods that read them.
    let deployment = find(&manifests, "Deployment", "tessera-controller");
    let controller = container(deployment, "controller");
    for c in [installer, controller] {
        let tls = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/etc/tessera/etcd-tls")
            .unwrap_or_else(|| panic!("{} does not mount the etcd TLS files", c["name"]));
        assert_eq!(tls["readOnly"], true);
    }

    // The plugin binary and the script are where the image puts them.
    let image = fs::read_to_string(repo_path("images/Containerfile")).unwrap();
    assert_eq!(
        setting("TESSERA_IPAM_BINARY"),
        "/usr/local/bin/tessera-ipam"
    );
    assert!(image.contains("COPY --from=build /out/ /usr/local/bin/"));
    assert!(image.contains("cp target/release/tessera-controller target/release/tessera-ipam"));
    assert!(image.contains("COPY images/install-cni.sh /usr/local/bin/tessera-install-cni"));
}

#[test]
fn the_datastore_names_the_members_of_the_shipped_etcd() {
    let manifests = manifests();
    let members = find(&manifests, "ConfigMap", "tessera-etcd-members");
    let initial = members["data"]["ETCD_INITIAL_CLUSTER"].as_str().unwrap();
    let peers: Vec<&str> = initial
        .split(',')
        .map(|member| {
            let (name, url) = member.split_once('=').unwrap();
            assert_eq!(url, format!("http://{name}:6667"), "{member}");
            name
        })
        .collect();
    let datastore = find(&manifests, "ConfigMap", "tessera-datastore");
    let url = datastore["data"]["TESSERA_DATASTORE"].as_str().unwrap();
    let clients: Vec<String> = peers.iter().map(|p| format!("{p}:6666")).collect();
    assert_eq!(url, format!("etcd://{}", clients.join(",")));

    let etcd = find(&manifests, "StatefulSet", "tessera-etcd");
    assert_eq!(etcd["spec"]["replicas"], peers.len());
    assert_eq!(pod_spec(etcd)["hostNetwork"], true);
    assert!(etcd["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data");
    find(
        &manifests,
        "Service",
        etcd["spec"]["serviceName"].as_str().unwrap(),
    );
}
