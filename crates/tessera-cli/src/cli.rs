//! Command-line syntax. Command, flag and kind names follow calicoctl and kubectl so that
//! existing runbooks work with `tessera` in place of `calicoctl`/`kubectl`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// Tessera: IP address management for Kubernetes and CNI.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, propagate_version = true)]
#[command(
    about = "Tessera: IP address management for Kubernetes and CNI",
    long_about = "Tessera: IP address management for Kubernetes and CNI.\n\n\
        Manage IP pools, reservations, nodes and namespaces with calicoctl/kubectl-style \
        commands, and inspect or change address assignments with `tessera ipam`."
)]
pub struct Cli {
    /// Datastore to use: a SQLite file path, sqlite:PATH, memory, or an etcd cluster
    /// etcd://HOST:PORT[,HOST:PORT...] (etcds:// for TLS). Default: the system store
    /// /var/lib/tessera/tessera.db for root, ~/.local/share/tessera/tessera.db for other
    /// users.
    #[arg(long, global = true, env = "TESSERA_DATASTORE", value_name = "URL")]
    pub datastore: Option<String>,

    /// Connection settings of an etcd datastore.
    #[command(flatten)]
    pub etcd: tessera_store::etcd_args::EtcdArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update resources from a file or stdin (`-f -`).
    Apply(FileArgs),
    /// Create resources from a file or stdin; fails if any already exists.
    Create(FileArgs),
    /// Replace existing resources from a file or stdin; fails if any does not exist.
    Replace(FileArgs),
    /// Delete resources named in a file, or by kind and name.
    Delete(DeleteArgs),
    /// Display resources.
    Get(GetArgs),
    /// Change a resource with a JSON merge patch.
    Patch(PatchArgs),
    /// Add, change or remove labels of a node or namespace.
    Label(MetaArgs),
    /// Add, change or remove annotations of a namespace or node.
    Annotate(MetaArgs),
    /// Inspect and change IP address management.
    Ipam {
        /// IPAM command.
        #[command(subcommand)]
        command: IpamCommand,
    },
    /// Show which datastore is in use and what it holds.
    Status,
    /// Forecast how many nodes and pods a pool serves and what runs out first.
    Plan(PlanArgs),
    /// Print the version.
    Version,
}

/// `plan --nodes N --pods-per-node M [--cidr CIDR] [--block-size N] ...`, or
/// `plan --pool NAME [--pods-per-node M]` against the datastore.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Forecast an existing pool from the datastore: its blocks, the IPAM configuration and
    /// the node records; pods per node are measured unless --pods-per-node is given.
    #[arg(long, value_name = "NAME", conflicts_with_all = [
        "nodes", "cidr", "block_size", "max_blocks_per_host", "ipv6", "strict_affinity",
    ])]
    pub pool: Option<String>,
    /// Nodes in the cluster.
    #[arg(long, required_unless_present = "pool")]
    pub nodes: Option<u64>,
    /// Pods on each node (with --pool: instead of the measured figure).
    #[arg(long, required_unless_present = "pool")]
    pub pods_per_node: Option<u64>,
    /// Pool CIDR; without it the smallest private CIDR that serves the cluster is recommended.
    #[arg(long)]
    pub cidr: Option<ipnet::IpNet>,
    /// Block prefix length; without it one is recommended (Calico's /26, /122, or smaller).
    #[arg(long)]
    pub block_size: Option<u8>,
    /// IPAMConfiguration maxBlocksPerHost; 0 is no limit.
    #[arg(long, default_value_t = 0)]
    pub max_blocks_per_host: u32,
    /// Plan an IPv6 pool.
    #[arg(long)]
    pub ipv6: bool,
    /// Plan for IPAMConfiguration strictAffinity on: nodes never borrow addresses from other
    /// nodes' blocks. Without it, Calico's default (off) is planned.
    #[arg(long)]
    pub strict_affinity: bool,
}

/// `-f FILE|-`.
#[derive(Debug, Args)]
pub struct FileArgs {
    /// Manifest file (multi-document YAML or JSON); `-` reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub filename: String,
}

/// `delete -f FILE` or `delete KIND NAME...`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["filename", "kind"])))]
pub struct DeleteArgs {
    /// Manifest file naming the resources to delete; `-` reads standard input.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        conflicts_with = "kind"
    )]
    pub filename: Option<String>,
    /// Kind of the resources (ippool, ipreservation, ipamconfig, node, namespace,
    /// spiderippool|sp, spidersubnet|ss, spiderreservedip|sr).
    pub kind: Option<String>,
    /// Names of the resources.
    #[arg(requires = "kind")]
    pub names: Vec<String>,
    /// Do not fail when a resource does not exist.
    #[arg(long)]
    pub skip_not_exists: bool,
}

/// Output format of `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GetOutput {
    /// The table with every column.
    Wide,
    /// Manifests as YAML.
    Yaml,
    /// Manifests as JSON.
    Json,
}

/// `get KIND [NAME...]`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Kind of the resources (ippool, ipreservation, ipamconfig, node, namespace,
    /// spiderippool|sp, spidersubnet|ss, spiderreservedip|sr).
    pub kind: String,
    /// Names of the resources; all of the kind when none are given.
    pub names: Vec<String>,
    /// Output format: the default table, wide, yaml or json.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<GetOutput>,
}

/// `patch KIND NAME -p JSON`.
#[derive(Debug, Args)]
pub struct PatchArgs {
    /// Kind of the resource.
    pub kind: String,
    /// Name of the resource.
    pub name: String,
    /// JSON merge patch, e.g. '{"spec": {"disabled": true}}'.
    #[arg(short = 'p', long = "patch", value_name = "JSON")]
    pub patch: String,
}

/// `label|annotate KIND NAME key=value... key-...`.
#[derive(Debug, Args)]
pub struct MetaArgs {
    /// Kind: node or namespace.
    pub kind: String,
    /// Name of the node or namespace (registered on first use when absent).
    pub name: String,
    /// `key=value` to set (the value may itself contain `=`), `key-` to remove.
    #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
    pub changes: Vec<String>,
    /// Allow replacing a value that is already set.
    #[arg(long)]
    pub overwrite: bool,
}

/// `tessera ipam ...`.
#[derive(Debug, Subcommand)]
pub enum IpamCommand {
    /// Show pool and block usage, one address, borrowed addresses or the configuration.
    Show(ShowArgs),
    /// Check IPAM records for inconsistencies; exits 1 when there are problems.
    Check,
    /// Change the IPAM configuration.
    Configure(ConfigureArgs),
    /// Assign addresses to a handle (as the CNI plugin would).
    Assign(AssignArgs),
    /// Release the addresses of a handle, or single addresses.
    Release(ReleaseArgs),
    /// Move a pool's workloads to another pool and delete it, or change a pool's block size;
    /// safe to interrupt: run it again to continue.
    Migrate(MigrateArgs),
    /// Write a self-contained HTML page: the pool map, totals and the consistency check.
    Report(ReportArgs),
}

/// `ipam show`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("view").args(["show_blocks", "show_borrowed", "show_configuration", "ip", "map"])))]
pub struct ShowArgs {
    /// Also list every block under its pool.
    #[arg(long)]
    pub show_blocks: bool,
    /// List addresses that nodes borrowed from blocks affine to other nodes.
    #[arg(long)]
    pub show_borrowed: bool,
    /// Show the IPAM configuration.
    #[arg(long)]
    pub show_configuration: bool,
    /// Show who holds one address.
    #[arg(long, value_name = "IP")]
    pub ip: Option<IpAddr>,
    /// Draw each pool's blocks, node by node, with how full each one is.
    #[arg(long)]
    pub map: bool,
    /// With --map: group the nodes by the value of this node label (e.g. rack).
    #[arg(long, value_name = "LABEL", requires = "map")]
    pub group_by: Option<String>,
}

/// `ipam report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// File to write the HTML page to (replaced as a whole, never left half-written).
    #[arg(long, value_name = "FILE")]
    pub html: PathBuf,
    /// Group the nodes by the value of this node label (e.g. rack).
    #[arg(long, value_name = "LABEL")]
    pub group_by: Option<String>,
}

/// `ipam migrate --from A --to B|--to-file FILE` or `ipam migrate --pool P --block-size N`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("migration").required(true).args(["from", "pool"])))]
#[command(group(ArgGroup::new("target").args(["to", "to_file"])))]
pub struct MigrateArgs {
    /// Pool to move the workloads off; it is disabled, then deleted once nothing holds its
    /// addresses.
    #[arg(long, value_name = "POOL", requires = "target")]
    pub from: Option<String>,
    /// Existing pool to move them to (enabled if disabled).
    #[arg(long, value_name = "POOL", requires = "from")]
    pub to: Option<String>,
    /// Manifest of one IPPool to move them to, created if it does not exist; `-` reads
    /// standard input.
    #[arg(short = 'f', long = "to-file", value_name = "FILE", requires = "from")]
    pub to_file: Option<String>,
    /// Pool whose block size changes (through a temporary pool and two moves).
    #[arg(long, value_name = "POOL", requires = "block_size")]
    pub pool: Option<String>,
    /// The new block size (IPv4 20-32, IPv6 116-128).
    #[arg(long, value_name = "N", requires = "pool")]
    pub block_size: Option<u8>,
    /// CIDR of the temporary pool; default: the lowest free network of the pool's size in
    /// its private address space.
    #[arg(long, value_name = "CIDR", requires = "pool")]
    pub temporary_cidr: Option<ipnet::IpNet>,
    /// Name of the temporary pool; default: <POOL>-temporary.
    #[arg(long, value_name = "NAME", requires = "pool")]
    pub temporary_pool: Option<String>,
    /// Print every step and who holds the source's addresses; change nothing.
    #[arg(long, conflicts_with_all = ["no_wait", "timeout"])]
    pub dry_run: bool,
    /// Workloads the Kubernetes controller restarts at once.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_parallel: u32,
    /// How long one restarted workload may take to become ready (e.g. 90s, 10m).
    #[arg(long, value_name = "DURATION", default_value = "10m",
          value_parser = crate::migrate_cmd::parse_duration)]
    pub ready_timeout: std::time::Duration,
    /// Do not wait while addresses of the source are held: list their holders and exit
    /// with status 2.
    #[arg(long, conflicts_with = "timeout")]
    pub no_wait: bool,
    /// Stop waiting after this long in all (e.g. 30m), listing the holders, with exit
    /// status 2.
    /// Default: wait until the addresses are released.
    #[arg(long, value_name = "DURATION", value_parser = crate::migrate_cmd::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// With --dry-run: kubeconfig to resolve the pods' owners with.
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

/// `ipam configure`.
#[derive(Debug, Args)]
pub struct ConfigureArgs {
    /// Never borrow addresses from blocks affine to other nodes.
    #[arg(long = "strictaffinity", value_name = "true|false")]
    pub strict_affinity: Option<bool>,
    /// Claim new blocks on demand.
    #[arg(long = "autoallocateblocks", value_name = "true|false")]
    pub auto_allocate_blocks: Option<bool>,
    /// Most blocks one node may claim (0 = no limit).
    #[arg(long = "max-blocks-per-host", value_name = "N")]
    pub max_blocks_per_host: Option<u32>,
}

/// Output format of `ipam assign`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AssignOutput {
    /// Handle and addresses with their pools and blocks, as JSON.
    Json,
}

/// `ipam assign`.
#[derive(Debug, Args)]
pub struct AssignArgs {
    /// Node the workload runs on.
    #[arg(long)]
    pub node: String,
    /// Handle to hold the addresses (release it with `ipam release --handle`).
    #[arg(long)]
    pub handle: String,
    /// Namespace of the pod (its pool annotations and labels apply).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Pod name.
    #[arg(long)]
    pub pod: Option<String>,
    /// Interface inside the container.
    #[arg(long)]
    pub interface: Option<String>,
    /// Container id.
    #[arg(long)]
    pub container_id: Option<String>,
    /// Pool to draw from, by name or CIDR; repeat for fallback order.
    #[arg(long = "pool", value_name = "POOL")]
    pub pools: Vec<String>,
    /// Specific address to assign; repeatable.
    #[arg(long = "ip", value_name = "IP")]
    pub ips: Vec<IpAddr>,
    /// Number of IPv4 addresses (default 1 when no count and no --ip is given).
    #[arg(long, value_name = "N")]
    pub ipv4: Option<u32>,
    /// Number of IPv6 addresses.
    #[arg(long, value_name = "N")]
    pub ipv6: Option<u32>,
    /// Output format: one address per line by default, or json.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<AssignOutput>,
}

/// `ipam release`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["handle", "ips"])))]
pub struct ReleaseArgs {
    /// Release every address of this handle.
    #[arg(long, conflicts_with = "ips")]
    pub handle: Option<String>,
    /// Release these addresses, whoever holds them.
    #[arg(long = "ip", value_name = "IP", num_args = 1..)]
    pub ips: Vec<IpAddr>,
}
