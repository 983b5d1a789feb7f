//! `ipam show --map` and `ipam report --html`: the map's text, and the HTML page as a real
//! headless browser (Debian's chromium) renders it, checked against `ipam show`.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use tessera_store::Op;

/// Longest a browser run may take before it is killed.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

const SETUP: &str = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-a
spec:
  cidr: 192.168.0.0/24
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-b
spec:
  cidr: 10.10.0.0/24
  blockSize: 28
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-old
spec:
  cidr: 172.16.0.0/24
---
apiVersion: v1
kind: Node
metadata:
  name: n1
  labels:
    rack: r1
---
apiVersion: v1
kind: Node
metadata:
  name: n2
  labels:
    rack: r1
---
apiVersion: v1
kind: Node
metadata:
  name: n3
  labels:
    rack: r2
---
apiVersion: v1
kind: Node
metadata:
  name: n4
---
apiVersion: v1
kind: Node
metadata:
  name: gone
  labels:
    rack: r2
"#;

/// A label value no validation would let through, written straight into the store, to
/// prove the page escapes what it reads.
const HOSTILE_RACK: &str = "<script>alert(1)</script>&co";

fn assign(env: &Env, node: &str, handle: &str, pool: &str, count: u32) {
    let count = count.to_string();
    env.ok(&[
        "ipam", "assign", "--node", node, "--handle", handle, "--pool", pool, "--ipv4", &count,
    ]);
}

/// Three pools (one deleted with an address still held), racks r1 and r2, a node without
/// the label, one with a hostile label value, a borrowed address and an unaffined block.
fn filled() -> Env {
    let env = Env::new();
    env.ok_with_input(&["apply", "-f", "-"], SETUP);
    let node = serde_json::json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n5", "labels": {"rack": HOSTILE_RACK}}});
    let store = tessera_store::open(&env.db().to_string_lossy()).expect("open store");
    store
        .txn(
            &[],
            &[Op::Put(
                "nodes/n5".into(),
                serde_json::to_vec(&node).unwrap(),
            )],
        )
        .expect("write node n5");
    drop(store);
    assign(&env, "n1", "a1", "pool-a", 10);
    assign(&env, "n2", "a2", "pool-a", 64);
    assign(&env, "n3", "a3", "pool-a", 3);
    assign(&env, "n4", "a4", "pool-a", 1);
    // pool-a's four /26 blocks are taken: n5 borrows from one of them.
    assign(&env, "n5", "a5", "pool-a", 1);
    assign(&env, "n1", "b1", "pool-b", 20);
    assign(&env, "n3", "b3", "pool-b", 5);
    assign(&env, "n5", "b5", "pool-b", 1);
    assign(&env, "gone", "b9", "pool-b", 2);
    assign(&env, "n2", "old", "pool-old", 4);
    env.ok(&["delete", "ippool", "pool-old"]);
    // Deleting a node leaves its blocks that still hold addresses without an owner.
    env.ok(&["delete", "node", "gone"]);
    env
}

#[test]
fn the_map_groups_blocks_by_rack_with_the_totals_of_ipam_show() {
    let env = filled();
    let run = env
        .command(&["ipam", "show", "--map", "--group-by", "rack"])
        .env("LANG", "C.UTF-8")
        .env_remove("LC_ALL")
        .env_remove("LC_CTYPE")
        .env_remove("NO_COLOR")
        .output()
        .expect("run tessera");
    assert_eq!(run.status.code(), Some(0));
    let map = String::from_utf8(run.stdout).unwrap();
    let expected = format!(
        "Each cell is one block (· empty, ▁▂▃▄▅▆▇ filling, █ full); counts are addresses in use/in total.\n\
         \n\
         IP pool pool-a 192.168.0.0/24: 79/256 (31%)\n\
        \x20 rack=r1: 75/128 (59%)\n\
        \x20   n1  11/64 (17%)   ▂\n\
        \x20   n2  64/64 (100%)  █\n\
        \x20 rack=r2: 3/64 (5%)\n\
        \x20   n3  3/64 (5%)     ▁\n\
        \x20 (no rack): 1/64 (2%)\n\
        \x20   n4  1/64 (2%)     ▁\n\
         \n\
         IP pool pool-b 10.10.0.0/24: 28/256 (11%)\n\
        \x20 rack={HOSTILE_RACK}: 1/16 (6%)\n\
        \x20   n5           1/16 (6%)    ▁\n\
        \x20 rack=r1: 20/32 (62%)\n\
        \x20   n1           20/32 (62%)  ▇▃\n\
        \x20 rack=r2: 5/16 (31%)\n\
        \x20   n3           5/16 (31%)   ▃\n\
        \x20 (unaffined): 2/16 (12%)\n\
        \x20   (unaffined)  2/16 (12%)   ▁\n\
         \n\
         blocks of deleted pool 172.16.0.0/24: 4/256 (2%)\n\
        \x20 rack=r1: 4/64 (6%)\n\
        \x20   n2  4/64 (6%)  ▁\n"
    );
    assert_eq!(map, expected);
}

/// The rows of `ipam show`'s table as cells (`| IP Pool | cidr | ... |`).
fn show_rows(table: &str, grouping: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .filter(|l| l.starts_with(&format!("| {grouping}")))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// The browser to render with: Debian's `chromium`, or `chromium-headless-shell`.
fn browser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-headless-shell"]
        .iter()
        .find_map(|name| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
}

/// Runs the headless browser on `page` with `action` (`--dump-dom` or `--screenshot=...`),
/// killed with everything it started if it outlives [`BROWSER_TIMEOUT`]; returns its
/// standard output.
fn run_browser(browser: &Path, work: &Path, page: &Path, action: &str) -> String {
    use std::os::unix::process::CommandExt as _;
    let profile = work.join(format!("profile{}", action.len()));
    let out_path = work.join("browser.out");
    let err_path = work.join("browser.err");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(action)
        .arg(format!("file://{}", page.display()))
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        // Its own process group, so the renderer and helper processes go with it.
        .process_group(0)
        .spawn()
        .expect("start the browser");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the browser") {
            break Some(status);
        }
        if started.elapsed() > BROWSER_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("the browser took longer than {BROWSER_TIMEOUT:?} and was killed; stderr:\n{stderr}")
    });
    assert!(
        status.success(),
        "the browser failed: {status}; stderr:\n{stderr}"
    );
    std::fs::read_to_string(&out_path).expect("browser output")
}

/// The text of the element with `data-field="field"` inside `row`.
fn field<'a>(row: &'a str, field: &str) -> &'a str {
    let marker = format!("data-field=\"{field}\">");
    let start = row
        .find(&marker)
        .unwrap_or_else(|| panic!("no {field} in {row}"))
        + marker.len();
    &row[start..start + row[start..].find('<').unwrap()]
}

/// The `<tr class="CLASS" ...>...</tr>` rows of `dom`.
fn rows<'a>(dom: &'a str, class: &str) -> Vec<&'a str> {
    let marker = format!("<tr class=\"{class}\"");
    dom.match_indices(&marker)
        .map(|(i, _)| &dom[i..i + dom[i..].find("</tr>").unwrap()])
        .collect()
}

/// The value of attribute `name` in `element`.
fn attribute<'a>(element: &'a str, name: &str) -> &'a str {
    let marker = format!("{name}=\"");
    let start = element.find(&marker).unwrap() + marker.len();
    &element[start..start + element[start..].find('"').unwrap()]
}

#[test]
fn the_html_report_renders_in_a_browser_with_the_totals_of_ipam_show() {
    let Some(browser) = browser() else {
        assert!(
            !in_ci(),
            "chromium is not installed (CI=true): apt-get install chromium"
        );
        eprintln!("skipped: no chromium or chromium-headless-shell on PATH");
        return;
    };
    let env = filled();
    let page = env.dir().join("report.html");
    let printed = env.ok(&[
        "ipam",
        "report",
        "--html",
        &page.to_string_lossy(),
        "--group-by",
        "rack",
    ]);
    assert_eq!(
        printed,
        format!(
            "Wrote {}: 3 pools, 10 blocks, 5 nodes, 0 problems.\n",
            page.display()
        )
    );
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing to fetch, no script, the hostile label escaped.
    for banned in ["http://", "https://", "<script", "<link", "<img", "src="] {
        assert!(!html.contains(banned), "the page contains {banned:?}");
    }
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&amp;co"));

    let dom = run_browser(&browser, env.dir(), &page, "--dump-dom");
    assert!(!dom.contains("<script"), "the hostile label became markup");

    // Pool totals: the same rows as `ipam show`.
    let show = show_rows(&env.ok(&["ipam", "show"]), "IP Pool");
    let shown: Vec<Vec<String>> = rows(&dom, "pool")
        .iter()
        .map(|row| {
            ["cidr", "total", "in-use", "free"].iter().fold(
                vec!["IP Pool".to_string()],
                |mut cells, f| {
                    cells.push(field(row, f).to_string());
                    cells
                },
            )
        })
        .collect();
    assert_eq!(shown, show);
    assert_eq!(show.len(), 3);

    // One square per block, with the counts of `ipam show --show-blocks`.
    let blocks: BTreeMap<String, (String, String)> =
        show_rows(&env.ok(&["ipam", "show", "--show-blocks"]), "Block")
            .into_iter()
            .map(|cells| {
                let in_use = cells[3].split(' ').next().unwrap().to_string();
                (cells[1].clone(), (cells[2].clone(), in_use))
            })
            .collect();
    let rects: BTreeMap<String, (String, String)> = dom
        .match_indices("<rect ")
        .map(|(i, _)| &dom[i..i + dom[i..].find('>').unwrap()])
        .map(|rect| {
            let counts = (
                attribute(rect, "data-total"),
                attribute(rect, "data-in-use"),
            );
            let block = attribute(rect, "data-block").to_string();
            (block, (counts.0.to_string(), counts.1.to_string()))
        })
        .collect();
    assert_eq!(dom.matches("<rect ").count(), blocks.len());
    assert_eq!(rects, blocks);

    // Per-node totals: the map's node lines summed over the pools.
    let nodes: BTreeMap<String, (String, String)> = rows(&dom, "node")
        .iter()
        .map(|row| {
            (
                attribute(row, "data-node").to_string(),
                (
                    field(row, "group").to_string(),
                    field(row, "in-use").to_string(),
                ),
            )
        })
        .collect();
    let expected: BTreeMap<String, (String, String)> = [
        ("n1", "r1", "31 (32%)"),
        ("n2", "r1", "68 (53%)"),
        ("n3", "r2", "8 (10%)"),
        ("n4", "", "1 (2%)"),
        (
            "n5",
            "&lt;script&gt;alert(1)&lt;/script&gt;&amp;co",
            "1 (6%)",
        ),
    ]
    .iter()
    .map(|(n, g, u)| (n.to_string(), (g.to_string(), u.to_string())))
    .collect();
    assert_eq!(nodes, expected);

    // The deleted pool's block and what the check found.
    assert_eq!(rows(&dom, "leftover").len(), 1);
    let check = &dom[dom.find("id=\"check\"").unwrap()..];
    assert_eq!(attribute(check, "data-problems"), "0");
    assert!(check.contains("No problems."));
    assert!(check.contains("has no node affinity"));

    // It draws: a screenshot is a PNG with something in it.
    run_browser(&browser, env.dir(), &page, "--screenshot=shot.png");
    let png = std::fs::read(env.dir().join("shot.png")).expect("screenshot");
    assert!(png.len() > 1000 && png.starts_with(b"\x89PNG"));
}

#[test]
fn bad_group_by_and_unwritable_report_paths_are_refused_cleanly() {
    let env = filled();
    assert_eq!(
        env.fails(&["ipam", "show", "--map", "--group-by", "rack!"]),
        "Error: --group-by \"rack!\" is not a node label key: '!' is not allowed; use letters, \
         digits, '-', '_' and '.', starting and ending with a letter or digit; give a key such \
         as rack or topology.kubernetes.io/zone\n"
    );
    let missing_dir = env.dir().join("no-such-dir").join("report.html");
    let err = env.fails(&["ipam", "report", "--html", &missing_dir.to_string_lossy()]);
    assert!(
        err.starts_with(&format!(
            "Error: cannot write the report to {}; give --html a file in a writable directory: ",
            missing_dir.display()
        )),
        "{err}"
    );
    // A directory in the way: the error, and no temporary file left next to it.
    let dir_in_the_way = env.dir().join("taken");
    std::fs::create_dir(&dir_in_the_way).unwrap();
    env.fails(&[
        "ipam",
        "report",
        "--html",
        &dir_in_the_way.to_string_lossy(),
    ]);
    let leftovers: Vec<_> = std::fs::read_dir(env.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Whether tests that must not skip for a missing tool are running (CI sets `CI=true`).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

#[test]
fn ipam_show_and_the_map_read_no_handle() {
    let env = filled();
    let before = env.ok(&["ipam", "show", "--show-blocks"]);
    // A damaged handle record: only the views that need handles may notice it.
    let store = tessera_store::open(&env.db().to_string_lossy()).expect("open store");
    store
        .txn(&[], &[Op::Put("handles/damaged".into(), b"{".to_vec())])
        .expect("write a damaged handle");
    drop(store);
    assert_eq!(env.ok(&["ipam", "show", "--show-blocks"]), before);
    env.ok(&["ipam", "show", "--map", "--group-by", "rack"]);
    assert!(env
        .fails(&["ipam", "show", "--show-borrowed"])
        .contains("record handles/damaged in the datastore is damaged"));
}
