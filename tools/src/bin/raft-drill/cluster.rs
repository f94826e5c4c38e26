//! The cluster under the drill: its file, its members' processes, and
//! what `INFO raft` says.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use tools::resp::{Conn, Reply};

use crate::{CONNECT_TIMEOUT, IO_TIMEOUT};

/// One member, as the cluster file and the data dir describe it.
#[derive(Clone, Debug)]
pub struct Member {
    pub id: u64,
    pub client_addr: SocketAddr,
    pub pid_file: PathBuf,
    pub log: PathBuf,
}

/// What the drill knows of the cluster, and how to act on it.
pub struct Cluster {
    pub data: PathBuf,
    pub members: Vec<Member>,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: (u64, u64),
    pub script: PathBuf,
    pub bin: Option<PathBuf>,
}

/// The parts of `cluster.toml` the drill reads and writes (the whole format
/// is raft-server/src/config.rs's `ClusterFile`); every other setting is
/// kept as read and written back as it was.
#[derive(Debug, Deserialize, Serialize)]
pub struct ClusterFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election_timeout_ms: Option<[u64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_transfer: Option<bool>,
    /// Every other top-level setting (`secret_file`, ...).
    #[serde(flatten)]
    pub other: toml::Table,
    /// Serialised last: a TOML array of tables ends the top level.
    #[serde(rename = "node", default)]
    pub nodes: Vec<NodeEntry>,
}

/// One `[[node]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct NodeEntry {
    pub id: u64,
    pub peer_addr: String,
    pub client_addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
}

impl ClusterFile {
    pub fn path(data: &Path) -> PathBuf {
        data.join("cluster.toml")
    }

    pub fn read(data: &Path) -> Result<ClusterFile, String> {
        let file = ClusterFile::path(data);
        let text = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))
    }

    /// Writes the file back, `comment` (lines starting with `#`) first.
    pub fn write(&self, data: &Path, comment: &str) -> Result<(), String> {
        let file = ClusterFile::path(data);
        let text = toml::to_string(self).map_err(|e| format!("{}: {e}", file.display()))?;
        fs::write(&file, format!("{comment}{text}")).map_err(|e| format!("{}: {e}", file.display()))
    }
}

impl Cluster {
    /// The cluster before its file exists: enough to run fault.sh
    /// (`cluster-start`, `cluster-stop`) on it.
    pub fn unloaded(data: &Path, script: &Path, bin: &Option<PathBuf>) -> Cluster {
        Cluster {
            data: data.to_path_buf(),
            members: Vec::new(),
            heartbeat_ms: 0,
            election_timeout_ms: (0, 0),
            script: script.to_path_buf(),
            bin: bin.clone(),
        }
    }

    pub fn load(data: &Path, script: PathBuf, bin: Option<PathBuf>) -> Result<Cluster, String> {
        let file = ClusterFile::read(data)?;
        let members = file
            .nodes
            .iter()
            .map(|n| {
                let client_addr = n
                    .client_addr
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| format!("member {}: bad client_addr {}", n.id, n.client_addr))?;
                Ok(Member {
                    id: n.id,
                    client_addr,
                    pid_file: data.join(format!("node{}.pid", n.id)),
                    log: data.join(format!("node{}", n.id)).join("node.log"),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if members.len() < 3 {
            return Err(format!(
                "{}: {} members; the drill needs at least 3",
                ClusterFile::path(data).display(),
                members.len()
            ));
        }
        let [min, max] = file.election_timeout_ms.unwrap_or([300, 600]);
        Ok(Cluster {
            data: data.to_path_buf(),
            members,
            heartbeat_ms: file.heartbeat_ms.unwrap_or(50),
            election_timeout_ms: (min, max),
            script,
            bin,
        })
    }

    pub fn member(&self, id: u64) -> &Member {
        self.members
            .iter()
            .find(|m| m.id == id)
            .expect("member ids come from the cluster file")
    }

    pub fn pid(&self, id: u64) -> Option<i32> {
        fs::read_to_string(&self.member(id).pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The member's process exists and is not a zombie (a killed member
    /// stays one until its parent, often init, reaps it).
    pub fn alive(&self, id: u64) -> bool {
        let Some(pid) = self.pid(id) else {
            return false;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            return false;
        }
        // The state follows the last ')' of /proc/PID/stat (the command
        // name may hold one).
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
            .unwrap_or(true)
    }

    pub fn signal(&self, id: u64, sig: libc::c_int) -> Result<(), String> {
        let pid = self
            .pid(id)
            .ok_or_else(|| format!("member {id}: no pid file"))?;
        // SAFETY: sends a signal to a process id read from the pid file.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(format!(
                "member {id} (pid {pid}): kill: {}",
                io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Runs `tools/fault.sh ARGS` on this cluster (already inside the
    /// namespace, if any) and returns its output.
    pub fn fault_sh(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(&self.script);
        cmd.args(args)
            .env("DATA", &self.data)
            .env_remove("RAFT_NETNS")
            .stdin(Stdio::null());
        if let Some(b) = &self.bin {
            cmd.env("RAFT_NODE", b);
        }
        let out = cmd
            .output()
            .map_err(|e| format!("{}: {e}", self.script.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text.trim().to_string())
        } else {
            Err(format!("fault.sh {}: {}", args.join(" "), text.trim()))
        }
    }

    pub fn info(&self, id: u64) -> Result<Info, String> {
        let mut c =
            Conn::connect_timeouts(self.member(id).client_addr, CONNECT_TIMEOUT, IO_TIMEOUT)
                .map_err(|e| format!("member {id}: {e}"))?;
        match c.cmd(&["INFO", "raft"]) {
            Ok(Reply::Bulk(Some(b))) => Ok(Info::parse(&String::from_utf8_lossy(&b))),
            Ok(r) => Err(format!("member {id}: INFO raft: unexpected reply {r:?}")),
            Err(e) => Err(format!("member {id}: INFO raft: {e}")),
        }
    }

    /// Restarts every member whose process is gone; returns their ids.
    pub fn restart_dead(&self) -> Vec<u64> {
        let mut restarted = Vec::new();
        for m in &self.members {
            if !self.alive(m.id) {
                match self.fault_sh(&["restart", &m.id.to_string()]) {
                    Ok(_) => restarted.push(m.id),
                    Err(e) => eprintln!("  could not restart member {}: {e}", m.id),
                }
            }
        }
        restarted
    }
}

/// The `INFO raft` fields the drill uses.
#[derive(Clone, Debug, Default)]
pub struct Info {
    pub role: String,
    pub term: u64,
    pub leader: u64,
    pub commit_index: u64,
    pub last_applied: u64,
}

impl Info {
    pub fn parse(text: &str) -> Info {
        let f: HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').split_once(':'))
            .collect();
        let num = |k: &str| f.get(k).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        Info {
            role: f.get("raft_role").unwrap_or(&"?").trim().to_string(),
            term: num("raft_term"),
            leader: num("raft_leader_id"),
            commit_index: num("raft_commit_index"),
            last_applied: num("raft_last_applied"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_file_round_trip_keeps_other_settings() {
        let dir = std::env::temp_dir().join(format!("raft-drill-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            ClusterFile::path(&dir),
            "# Generated by make cluster.\nheartbeat_ms = 50\nelection_timeout_ms = [300, 600]\n\
             secret_file = \"cluster.secret\"\n\n[[node]]\nid = 1\npeer_addr = \"127.0.0.1:7001\"\n\
             client_addr = \"127.0.0.1:6401\"\n",
        )
        .unwrap();
        let mut f = ClusterFile::read(&dir).unwrap();
        assert_eq!(
            (f.heartbeat_ms, f.election_timeout_ms),
            (Some(50), Some([300, 600]))
        );
        f.shutdown_transfer = Some(false);
        f.nodes.push(NodeEntry {
            id: 4,
            peer_addr: "127.0.0.4:7004".into(),
            client_addr: "127.0.0.4:6404".into(),
            metrics_addr: Some("127.0.0.4:9404".into()),
        });
        f.write(&dir, "# c\n").unwrap();
        let text = fs::read_to_string(ClusterFile::path(&dir)).unwrap();
        // Top-level keys before the first [[node]]: after it they would
        // belong to that node.
        let first_node = text.find("[[node]]").unwrap();
        for key in ["shutdown_transfer", "secret_file", "heartbeat_ms"] {
            assert!(text.find(key).unwrap() < first_node, "{key} in:\n{text}");
        }
        let g = ClusterFile::read(&dir).unwrap();
        assert_eq!(g.nodes, f.nodes);
        assert_eq!(g.shutdown_transfer, Some(false));
        assert_eq!(
            g.other.get("secret_file").and_then(|v| v.as_str()),
            Some("cluster.secret")
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_cluster_values() {
        let i = Info::parse(
            "raft_node_id:1\r\nraft_role:leader\r\nraft_term:7\r\nraft_leader_id:1\r\n",
        );
        assert_eq!((i.role.as_str(), i.term, i.leader), ("leader", 7, 1));
    }
}
