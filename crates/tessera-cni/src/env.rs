//! The `CNI_*` environment variables of one invocation.

use std::net::IpAddr;

use tessera_core::text::quoted;

use crate::config::parse_addr_or_cidr;
use crate::error::{code, CniError};

/// The operation asked for in `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Allocate addresses for an attachment.
    Add,
    /// Release an attachment's addresses.
    Del,
    /// Verify an attachment still holds its addresses.
    Check,
    /// Report supported versions.
    Version,
    /// Release every attachment of the network not listed as valid.
    Gc,
    /// Report whether ADD could succeed.
    Status,
}

impl Command {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            _ => return None,
        })
    }

    /// The verb as the runtime spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Gc => "GC",
            Self::Status => "STATUS",
        }
    }

    /// Whether the verb concerns one attachment (and so needs its container and interface).
    pub fn is_per_attachment(self) -> bool {
        matches!(self, Self::Add | Self::Del | Self::Check)
    }
}

/// The invocation's environment, validated for its command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS` (may be empty on DEL: the namespace can be gone).
    pub netns: String,
    /// `CNI_ARGS`, as key-value pairs in order.
    pub args: Vec<(String, String)>,
}

impl CniEnv {
    /// A value of `CNI_ARGS`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The addresses `IP` asks for, as Podman's `--ip` and host-local's users send them: one
    /// address, or several separated by commas, each with an optional prefix (ignored: the
    /// pool decides it). Every `IP` entry counts. Read only by ADD, so that a malformed value
    /// never stands in the way of a DEL.
    pub fn requested_ips(&self) -> Result<Vec<IpAddr>, CniError> {
        let mut ips = Vec::new();
        for (_, value) in self.args.iter().filter(|(k, v)| k == "IP" && !v.is_empty()) {
            for item in value.split(',') {
                let ip = parse_addr_or_cidr(item).ok_or_else(|| {
                    CniError::new(
                        code::BAD_POD_REQUEST,
                        format!(
                            "CNI_ARGS IP={}: {} is not an IP address (IP takes one address, or \
                             several separated by commas, such as IP=10.22.0.5,fd00::5)",
                            quoted(value),
                            quoted(item.trim())
                        ),
                    )
                })?;
                ips.push(ip);
            }
        }
        Ok(ips)
    }
}

/// Reads `CNI_COMMAND`. `Ok(None)` when it is unset or empty (a person ran the binary).
pub fn command(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Command>, CniError> {
    let Some(text) = get("CNI_COMMAND").filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    Command::parse(&text).map(Some).ok_or_else(|| {
        CniError::env(format!(
            "CNI_COMMAND {} is not a CNI verb; expected ADD, DEL, CHECK, GC, STATUS or VERSION",
            quoted(&text)
        ))
    })
}

/// Reads and validates the variables `command` needs; every missing one is named at once.
pub fn read(command: Command, get: &dyn Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
    let value = |name: &str| get(name).unwrap_or_default();
    let env = CniEnv {
        container_id: value("CNI_CONTAINERID"),
        ifname: value("CNI_IFNAME"),
        netns: value("CNI_NETNS"),
        args: parse_args(&value("CNI_ARGS"))?,
    };
    if !command.is_per_attachment() {
        return Ok(env);
    }
    let mut missing = Vec::new();
    if env.container_id.is_empty() {
        missing.push("CNI_CONTAINERID");
    }
    if env.ifname.is_empty() {
        missing.push("CNI_IFNAME");
    }
    // DEL must work after the namespace is gone, so only ADD and CHECK need it.
    if env.netns.is_empty() && command != Command::Del {
        missing.push("CNI_NETNS");
    }
    if !missing.is_empty() {
        return Err(CniError::env(format!(
            "required environment variable{} {} {} missing for {}; the container runtime sets \
             them when it runs the plugin",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", "),
            if missing.len() == 1 { "is" } else { "are" },
            command.as_str()
        )));
    }
    validate_container_id(&env.container_id)?;
    validate_ifname(&env.ifname)?;
    Ok(env)
}

/// `CNI_ARGS` is `KEY=VALUE` pairs separated by `;`.
fn parse_args(text: &str) -> Result<Vec<(String, String)>, CniError> {
    text.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    CniError::env(format!(
                        "CNI_ARGS entry {} is not KEY=VALUE (CNI_ARGS is KEY=VALUE pairs \
                         separated by ';')",
                        quoted(pair)
                    ))
                })
        })
        .collect()
}

/// The spec: starts with an alphanumeric character, then alphanumerics, `_`, `.` or `-`.
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(CniError::env(format!(
            "CNI_CONTAINERID {} is invalid: it must start with a letter or digit followed by \
             letters, digits, '_', '.' or '-'",
            quoted(id)
        )))
    }
}

/// The spec: Linux interface name rules (non-empty, under 16 bytes, not `.` or `..`, no `/`,
/// `:` or whitespace).
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let problem = if name.len() > 15 {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("it may not be '.' or '..'")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("it may not contain '/', ':' or whitespace")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(CniError::env(format!(
            "CNI_IFNAME {} is invalid: {p}",
            quoted(name)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn getter(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn missing_variables_are_named_together() {
        let e = read(Command::Add, &getter(&[("CNI_NETNS", "/x")])).unwrap_err();
        assert_eq!(e.code, 4);
        assert_eq!(
            e.msg,
            "required environment variables CNI_CONTAINERID, CNI_IFNAME are missing for ADD; \
             the container runtime sets them when it runs the plugin"
        );
        // DEL needs no namespace.
        read(
            Command::Del,
            &getter(&[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")]),
        )
        .unwrap();
    }

    #[test]
    fn args_are_parsed_and_validated() {
        let env = read(
            Command::Del,
            &getter(&[
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                (
                    "CNI_ARGS",
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(env.arg("K8S_POD_NAMESPACE"), Some("ns"));
        assert_eq!(env.arg("K8S_POD_NAME"), Some("p"));
        let e = parse_args("A=1;oops").unwrap_err();
        assert!(e.msg.contains("\"oops\" is not KEY=VALUE"), "{}", e.msg);
    }

    #[test]
    fn ip_takes_addresses_separated_by_commas() {
        let env = |args: &str| CniEnv {
            args: parse_args(args).unwrap(),
            ..CniEnv::default()
        };
        let ips = |args: &str| -> Vec<String> {
            let got = env(args).requested_ips().unwrap();
            got.iter().map(ToString::to_string).collect()
        };
        assert!(ips("IgnoreUnknown=1;K8S_POD_NAME=web").is_empty());
        assert!(ips("IP=").is_empty());
        assert_eq!(ips("IP=10.0.0.5"), ["10.0.0.5"]);
        assert_eq!(ips("IP=10.0.0.5/24, fd00::5"), ["10.0.0.5", "fd00::5"]);
        assert_eq!(ips("IP=10.0.0.5;IP=10.0.0.6"), ["10.0.0.5", "10.0.0.6"]);
        let e = env("IP=10.0.0.5,,fd00::5").requested_ips().unwrap_err();
        assert_eq!(e.code, code::BAD_POD_REQUEST);
        assert!(
            e.msg
                .starts_with("CNI_ARGS IP=\"10.0.0.5,,fd00::5\": \"\" is not an IP address"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn ids_and_interface_names_follow_the_spec() {
        assert!(validate_container_id("abc-1_2.3").is_ok());
        assert!(validate_container_id("-abc").is_err());
        assert!(validate_container_id("a/b").is_err());
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("0123456789abcdef").is_err());
        assert!(validate_ifname("..").is_err());
        assert!(validate_ifname("a:b").is_err());
        assert!(command(&getter(&[("CNI_COMMAND", "ADDD")])).is_err());
        assert_eq!(command(&getter(&[])).unwrap(), None);
    }
}
