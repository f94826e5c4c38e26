//! Unsafe recovery for an operator whose quorum is gone for good
//! (`--force-new-cluster`; anchors: etcd's `--force-new-cluster`,
//! Consul's `peers.json`, TiKV's unsafe recovery).
//!
//! When a majority of the voters is lost for good (disks gone, machines
//! gone), no leader can ever be elected again: that is Raft working as
//! designed, since any write the lost members acknowledged might be on
//! them alone. The way out gives that guarantee up, and says so: one
//! surviving member is restarted with `--force-new-cluster`, and before
//! the node starts, this appends to its own log a configuration in which
//! it is the only voter, in a term above every term it has seen. It then
//! elects itself, commits everything its log holds (writes that the old
//! cluster never committed included) and serves; the others are re-added
//! with `RAFT.ADD`, each from an empty data dir started with `--join`.
//!
//! What is lost: whatever the lost members had committed that this one
//! had not received. Pick the survivor with the highest
//! `raft_last_log_index` (`INFO raft`) to lose the least. Never restart
//! one of the old members with its old data dir afterwards: its log may
//! hold entries this new history contradicts.
//!
//! The configuration is an ordinary log entry, written and fsynced here
//! through the same store as every other, so a crash during recovery
//! leaves either the old state or the new one; running the flag twice
//! appends a second single-voter configuration, which changes nothing.

use raft_proto::{Entry, EntryPayload, HardState, Membership, Term};

use crate::config::Settings;
use crate::members;
use crate::storage::{Recovered, Storage};

/// Makes this member the only voter of a new configuration in its own
/// log. Returns the line the caller logs, or why it cannot.
pub fn force_new_cluster(
    settings: &Settings,
    storage: &mut Storage,
    recovered: &mut Recovered,
) -> Result<String, String> {
    if recovered.first_boot {
        return Err(format!(
            "--force-new-cluster: {} holds no state to recover from (it is for a member \
             whose cluster lost its quorum; start a new cluster without it)",
            settings.data_dir.display()
        ));
    }
    let last_index = storage.last_index();
    let last_term = recovered
        .entries
        .last()
        .map(|e| e.term)
        .or(recovered.snapshot.map(|s| s.last_term))
        .unwrap_or(Term(0));
    // Above every term this member has seen, so that no other member's
    // entry of that term (and index) can exist.
    let seen = recovered.hard_state.current_term.max(last_term);
    if seen >= Term::MAX {
        return Err(format!(
            "--force-new-cluster: the saved term {seen} is at the maximum {}",
            Term::MAX
        ));
    }
    let term = seen.next();
    let me = settings.me().clone();
    let membership = Membership {
        voters: vec![me.id],
        learners: Vec::new(),
        context: members::encode(std::slice::from_ref(&me)),
    };
    let entry = Entry {
        term,
        index: last_index.next(),
        payload: EntryPayload::Configuration(Box::new(membership)),
    };
    let hard_state = HardState {
        current_term: term,
        voted_for: None,
    };
    storage.save_hard_state(hard_state);
    storage.append(std::slice::from_ref(&entry));
    storage
        .sync()
        .map_err(|e| format!("--force-new-cluster: cannot write the new configuration: {e}"))?;
    recovered.hard_state = hard_state;
    recovered.entries.push(entry.clone());
    Ok(format!(
        "--force-new-cluster: UNSAFE RECOVERY: this member is now the only voter (configuration \
         at index {} in term {term}); everything in its log up to index {last_index} will be \
         committed, and what the lost members alone held is gone. Re-add the others with \
         RAFT.ADD, each from an empty data dir started with --join; never restart an old \
         member with its old data",
        entry.index
    ))
}
