//! Bad input and broken stores: every error names what was wrong and where, changes nothing,
//! exits 1, and never panics.

mod common;

use common::Env;

const TWO_POOLS_ONE_BAD: &str = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: good-pool
spec:
  cidr: 10.1.0.0/16
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: bad-pool
spec:
  cidr: 10.2.0.0/16
  natOutgoin: true
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: worse-pool
spec:
  cidr: 10.3.0.0/16
  blockSize: 33
"#;

#[test]
fn one_invalid_document_changes_nothing_and_every_error_is_printed() {
    let env = Env::new();
    let file = env.write_file("pools.yaml", TWO_POOLS_ONE_BAD);
    for command in ["apply", "create"] {
        assert_eq!(
            env.fails(&[command, "-f", &file]),
            format!(
                "Error: {file}: document 2 (line 8, IPPool \"bad-pool\"): spec.natOutgoin: unknown \
                 field; did you mean natOutgoing? IPPool spec accepts cidr, blockSize, ipipMode, \
                 vxlanMode, natOutgoing, disabled, disableBGPExport, nodeSelector, \
                 namespaceSelector, allowedUses, assignmentMode\n\
                 {file}: document 3 (line 16, IPPool \"worse-pool\"): spec.blockSize: 33 is \
                 outside 20-32 for IPv4\n"
            )
        );
    }
    assert_eq!(env.ok(&["get", "ippool"]), "NAME   CIDR   SELECTOR\n");
}

#[test]
fn unknown_kind_is_named_with_the_known_ones() {
    let env = Env::new();
    let expected = "Error: unknown resource type \"bgppeer\"; Tessera manages: ippool, \
                    ipreservation, ipamconfiguration, node, namespace, spiderippool (sp), \
                    spidersubnet (ss), spiderreservedip (sr)\n";
    assert_eq!(env.fails(&["get", "bgppeer"]), expected);
    assert_eq!(env.fails(&["delete", "bgppeer", "peer1"]), expected);
}

#[test]
fn missing_resources_are_named() {
    let env = Env::new();
    assert_eq!(
        env.fails(&["get", "ippool", "missing"]),
        "Error: resource does not exist: IPPool(missing); see what exists with `tessera get ippools`\n"
    );
    assert_eq!(
        env.fails(&["delete", "ippools", "default-ipv4-ippool", "other"]),
        "Error: resource does not exist: IPPool(default-ipv4-ippool); see what exists with \
         `tessera get ippools`\n\
         resource does not exist: IPPool(other); see what exists with `tessera get ippools`\n"
    );
    assert_eq!(
        env.fails(&["patch", "ippool", "missing", "-p", r#"{"spec": {"disabled": true}}"#]),
        "Error: resource does not exist: IPPool(missing); see what exists with `tessera get ippools`\n"
    );
}

#[test]
fn bad_patches_and_label_arguments_are_explained() {
    let env = Env::new();
    assert_eq!(
        env.fails(&["patch", "ippool", "p", "-p", "{spec: 1}"]),
        "Error: the patch is not valid JSON (key must be a string at line 1 column 2); write a \
         JSON merge patch such as -p '{\"spec\": {\"disabled\": true}}'\n"
    );
    assert_eq!(
        env.fails(&[
            "patch",
            "ippool",
            "p",
            "-p",
            r#"{"spec": {"disabled": true, "disabled": false}}"#
        ]),
        "Error: the patch is not valid JSON (duplicate key \"disabled\" in an object; keep only \
         one of them at line 1 column 38); write a JSON merge patch such as -p '{\"spec\": \
         {\"disabled\": true}}'\n"
    );
    assert_eq!(
        env.fails(&["label", "node", "n1", "rack"]),
        "Error: \"rack\" is neither key=value (to set) nor key- (to remove)\n"
    );
}

#[test]
fn unreadable_manifest_file_is_named() {
    let env = Env::new();
    let missing = env.dir().join("nope.yaml");
    let missing = missing.to_string_lossy();
    assert_eq!(
        env.fails(&["apply", "-f", &missing]),
        format!(
            "Error: cannot read {missing}; check the path given with -f (use -f - for standard \
             input): No such file or directory (os error 2)\n"
        )
    );
}

#[test]
fn corrupt_store_file_is_named_without_a_panic() {
    let env = Env::new();
    std::fs::write(env.db(), "this is not a database, just text\n".repeat(200)).unwrap();
    let db = env.db().display().to_string();
    let expected = format!(
        "Error: datastore {db} is corrupt or not a Tessera store: reading the database schema: \
         the file is not a SQLite database (file is not a database); move it away (for example \
         `mv {db} {db}.broken`) or point --datastore (or TESSERA_DATASTORE) elsewhere\n"
    );
    for args in [
        &["get", "ippool"][..],
        &["ipam", "show"],
        &["ipam", "assign", "--node", "n", "--handle", "h"],
        &["status"],
    ] {
        assert_eq!(env.fails(args), expected, "for {args:?}");
    }
}

#[test]
fn mistyped_datastore_url_is_refused() {
    let env = Env::new();
    let run = env
        .command(&["get", "ippool"])
        .args(["--datastore", "sqlit:/tmp/x.db"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&run.stderr),
        "Error: datastore \"sqlit:/tmp/x.db\" is not a valid datastore URL: unknown scheme \
         \"sqlit\" (for a file whose name contains ':', write ./sqlit:/tmp/x.db or \
         sqlite:sqlit:/tmp/x.db); accepted forms: a file path, sqlite:PATH, \
         sqlite:///ABSOLUTE/PATH, memory, or etcd://HOST:PORT[,HOST:PORT] (etcds:// for TLS); \
         set it with --datastore or TESSERA_DATASTORE\n"
    );
}

#[test]
fn assign_without_pools_says_what_to_create() {
    let env = Env::new();
    assert_eq!(
        env.fails(&["ipam", "assign", "--node", "n1", "--handle", "h"]),
        "Error: no enabled IPv4 IP pool selects node \"n1\"; create one with a matching \
         nodeSelector, or label the node\n"
    );
    assert_eq!(
        env.fails(&["ipam", "assign", "--node", "n1", "--handle", "h", "--pool", "nope"]),
        "Error: IP pool \"nope\" does not exist; list pools with `tessera get ippool`\n"
    );
}

#[test]
fn empty_input_is_refused() {
    let env = Env::new();
    let run = env.run_with_input(&["apply", "-f", "-"], "# only a comment\n");
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (
            1,
            "",
            "Error: stdin: no resources found (the input is empty or holds only comments); pass \
             a file with at least one manifest such as an IPPool\n"
        )
    );
}

#[test]
fn garbage_input_is_an_error_never_a_panic() {
    let env = Env::new();
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("binary", vec![0xff, 0xfe, 0x00, 0x41, 0x9c]),
        ("nul bytes", b"apiVersion: projectcalico.org/v3\0\0".to_vec()),
        ("deep nesting", deep.into_bytes()),
        ("scalar", b"42\n".to_vec()),
        ("list of scalars", b"- 1\n- two\n".to_vec()),
        ("tabs", b"kind:\tIPPool\n\tmetadata: x\n".to_vec()),
        ("huge number", b"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: 10.0.0.0/8\n  blockSize: 99999999999999999999999\n".to_vec()),
        ("wrong types", b"apiVersion: 3\nkind: [IPPool]\nmetadata: 7\nspec: true\n".to_vec()),
        ("half json", b"{\"apiVersion\": \"projectcalico.org/v3\", \"kind\": \"IPP".to_vec()),
        ("anchors", b"a: &x [*x]\n".to_vec()),
    ];
    for (what, bytes) in inputs {
        let path = env.dir().join("input");
        std::fs::write(&path, &bytes).unwrap();
        for command in ["apply", "create", "replace", "delete"] {
            let run = env.run(&[command, "-f", &path.to_string_lossy()]);
            assert_eq!(run.code, 1, "{what} with {command}: {run:?}");
            assert!(run.stdout.is_empty(), "{what} with {command}: {run:?}");
            assert!(
                run.stderr.starts_with("Error: ") && !run.stderr.contains("panicked"),
                "{what} with {command}: {run:?}"
            );
        }
    }
    assert_eq!(env.ok(&["get", "ippool"]), "NAME   CIDR   SELECTOR\n");
    std::fs::write(env.dir().join("latin1.yaml"), b"kind: IPPool # caf\xe9\n").unwrap();
    let latin1 = env.dir().join("latin1.yaml").to_string_lossy().into_owned();
    assert_eq!(
        env.fails(&["apply", "-f", &latin1]),
        format!(
            "Error: {latin1} is not UTF-8 text (invalid byte at offset 18); manifests must be \
             YAML or JSON saved as UTF-8\n"
        )
    );
}

#[test]
fn usage_errors_exit_1_with_the_usage_hint() {
    let env = Env::new();
    assert_eq!(
        env.fails(&["ipam", "show", "--ip", "192.168.0.300"]),
        "Error: invalid value '192.168.0.300' for '--ip <IP>': invalid IP address syntax\n\
         \n\
         For more information, try '--help'.\n"
    );
    assert_eq!(
        env.fails(&["ipam", "release"]),
        "Error: the following required arguments were not provided:\n\
        \x20 <--handle <HANDLE>|--ip <IP>...>\n\
         \n\
         Usage: tessera ipam release <--handle <HANDLE>|--ip <IP>...>\n\
         \n\
         For more information, try '--help'.\n"
    );
}

/// The manifest input limit of `tessera apply`, as the error names it.
const LIMIT_MESSAGE: &str = "is larger than 64 MiB, the limit for manifest input; split it into \
                             several files and apply them one by one\n";

#[test]
fn endless_or_oversized_input_is_refused_at_the_limit() {
    use std::io::Write as _;
    use std::time::{Duration, Instant};
    let env = Env::new();
    let started = Instant::now();
    assert_eq!(
        env.fails(&["apply", "-f", "/dev/zero"]),
        format!("Error: /dev/zero {LIMIT_MESSAGE}")
    );
    // A sparse file: its size alone refuses it.
    let big = env.dir().join("big.yaml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((64 << 20) + 1)
        .unwrap();
    let big = big.to_string_lossy().into_owned();
    assert_eq!(
        env.fails(&["apply", "-f", &big]),
        format!("Error: {big} {LIMIT_MESSAGE}")
    );
    // `yes 'a: b' | tessera apply -f -`: the writer stops when the reader gives up, or after
    // twice the limit.
    let mut child = env
        .command(&["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = "a: b\n".repeat(1 << 14);
        let mut written = 0usize;
        while written < 2 * (64 << 20) && stdin.write_all(chunk.as_bytes()).is_ok() {
            written += chunk.len();
        }
        written
    });
    let run = child.wait_with_output().unwrap();
    let written = writer.join().unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&run.stderr),
        format!("Error: standard input {LIMIT_MESSAGE}")
    );
    assert!(written < 2 * (64 << 20), "tessera read on: {written} bytes");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(env.ok(&["get", "ippool"]), "NAME   CIDR   SELECTOR\n");
}

#[test]
fn handles_with_control_characters_and_mapped_addresses_are_refused() {
    let env = Env::new();
    env.ok_with_input(
        &["apply", "-f", "-"],
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: v6\nspec:\n  \
         cidr: fd00:10::/120\n",
    );
    let assign = |handle: &str, extra: &[&str]| {
        let mut args = vec!["ipam", "assign", "--node", "n1", "--handle", handle];
        args.extend_from_slice(extra);
        env.fails(&args)
    };
    assert_eq!(
        assign("h\nforged line", &["--ipv6", "1"]),
        "Error: invalid request: the handle id \"h\\nforged line\" contains the control \
         character U+000A; a handle id is printable text of at most 512 bytes\n"
    );
    let long = "h".repeat(600);
    assert_eq!(
        assign(&long, &["--ipv6", "1"]),
        format!(
            "Error: invalid request: the handle id \"{}\"… (600 bytes) is longer than 512 \
             bytes; a handle id is printable text of at most 512 bytes\n",
            "h".repeat(120)
        )
    );
    assert_eq!(
        assign("h1", &["--ip", "::ffff:10.90.0.5"]),
        "Error: invalid request: ::ffff:10.90.0.5 is an IPv4-mapped IPv6 address (::ffff:0:0/96 \
         stands for IPv4 addresses); ask for 10.90.0.5 instead\n"
    );
    // Printable text beyond ASCII is fine.
    assert_eq!(
        env.ok(&[
            "ipam",
            "assign",
            "--node",
            "n1",
            "--handle",
            "h\u{a0}é",
            "--ipv6",
            "1"
        ]),
        "fd00:10::1\n"
    );
}

#[test]
fn long_or_multi_line_input_is_quoted_and_cut_in_errors() {
    let env = Env::new();
    let huge = "x".repeat(100_000);
    // YAML keys are at most 1024 characters.
    let key = "x".repeat(1_000);
    let manifest = format!(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: n{huge}\n\
         spec:\n  cidr: 10.{huge}/8\n  nodeSelector: rack == \"0\" && {huge} ==\n---\n\
         apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n  labels:\n    k{key}: \"v\\nforged\"\n"
    );
    let file = env.write_file("huge.yaml", &manifest);
    let err = env.fails(&["apply", "-f", &file]);
    assert!(err.len() < 4_000, "{} bytes: {}", err.len(), &err[..4_000]);
    for part in [
        "metadata.name: \"nxxxxxxxxx",
        "xxxx\"… (100001 bytes) is not a valid name",
        "spec.cidr: \"10.xxxx",
        "spec.nodeSelector: invalid selector \"rack == \\\"0\\\" && xxxx",
        "metadata.labels.\"kxxxx",
        "\"v\\nforged\" is not a valid label value",
    ] {
        assert!(err.contains(part), "{part:?} missing from:\n{err}");
    }
    // One line per problem: nothing in the input starts a line of its own.
    assert_eq!(err.lines().count(), 5, "{err}");
    assert!(
        err.lines()
            .all(|l| l.starts_with(&format!("Error: {file}: document"))
                || l.starts_with(&format!("{file}: document"))),
        "{err}"
    );
    // A name given on the command line.
    let err = env.fails(&["get", "ippool", &huge]);
    assert!(err.len() < 400, "{err}");
    assert!(err.contains("… (100000 bytes)); see what exists"), "{err}");
}

#[test]
fn assign_refuses_node_names_kubernetes_would_refuse() {
    let env = Env::new();
    env.ok_with_input(
        &["apply", "-f", "-"],
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  \
         cidr: 10.0.0.0/24\n  blockSize: 28\n",
    );
    let rule = "a node name is a DNS subdomain, as in Kubernetes: use lowercase letters, digits, \
                '-' and '.', starting and ending with a letter or digit, at most 253 characters";
    for (node, problem) in [
        ("a/x", "'/' is not allowed"),
        ("A B", "'A' is uppercase (write 'a')"),
        ("_shared", "'_' is not allowed"),
        ("", "it is empty"),
    ] {
        assert_eq!(
            env.fails(&["ipam", "assign", "--node", node, "--handle", "h"]),
            format!("Error: --node: node name \"{node}\" is not valid: {problem}; {rule}\n"),
            "for {node:?}"
        );
    }
    let check = env.ok(&["ipam", "check"]);
    assert!(check.contains("Found 0 IPAM blocks."), "{check}");
    assert!(check.contains("found 0 problems"), "{check}");
    assert_eq!(
        env.ok(&[
            "ipam",
            "assign",
            "--node",
            "kube-node-0.example.com",
            "--handle",
            "h"
        ]),
        "10.0.0.1\n"
    );
}
