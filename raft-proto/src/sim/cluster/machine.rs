//! The state machine each member runs (a register per key), its
//! snapshots, and what the driver hands back for the member to carry out.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{Cluster, Completion};
use crate::sim::Violation;
use crate::{Action, EntryPayload, NodeId, SnapshotMeta};

/// The sim's state machine: a register per key. Commands are 16 bytes:
/// key and value, big-endian.
pub fn encode_write(key: u64, value: u64) -> Bytes {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&key.to_be_bytes());
    v.extend_from_slice(&value.to_be_bytes());
    Bytes::from(v)
}

/// The sim state machine's snapshot: a version byte, then each key and
/// value big-endian, in key order.
fn encode_machine(machine: &BTreeMap<u64, u64>) -> Bytes {
    let mut v = Vec::with_capacity(1 + 16 * machine.len());
    v.push(1);
    for (k, val) in machine {
        v.extend_from_slice(&k.to_be_bytes());
        v.extend_from_slice(&val.to_be_bytes());
    }
    Bytes::from(v)
}

pub(super) fn decode_machine(data: &[u8]) -> BTreeMap<u64, u64> {
    assert_eq!(data.first(), Some(&1), "sim snapshot version");
    assert_eq!((data.len() - 1) % 16, 0, "sim snapshot length");
    data[1..]
        .chunks(16)
        .map(|c| decode_write(c).expect("16 bytes"))
        .collect()
}

/// A fingerprint of a state machine, for the checker.
pub(super) fn machine_hash(machine: &BTreeMap<u64, u64>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in encode_machine(machine).iter() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn decode_write(cmd: &[u8]) -> Option<(u64, u64)> {
    if cmd.len() != 16 {
        return None;
    }
    let key = u64::from_be_bytes(cmd[..8].try_into().ok()?);
    let value = u64::from_be_bytes(cmd[8..].try_into().ok()?);
    Some((key, value))
}

impl Cluster {
    /// Carries out one action the driver handed back for `id` (see
    /// [`crate::driver::Driver::drain`]): applies an entry or installs a
    /// snapshot on the member's state machine, completes a read, or
    /// notes an event. Counts reports of a removal in `removal_reports`.
    pub(super) fn carry_out(
        &mut self,
        id: NodeId,
        action: Action,
        removal_reports: &mut u64,
    ) -> Result<(), Violation> {
        let member = self.members.get_mut(&id).expect("member");
        match action {
            Action::Apply(e) => {
                if let EntryPayload::Command(c) = &e.payload {
                    if let Some((k, v)) = decode_write(c) {
                        member.machine.insert(k, v);
                    }
                }
                member.applied = (e.index, e.term);
                let r = self.checker.on_apply(id, &e);
                self.completions
                    .push(Completion::Applied { node: id, entry: e });
                r
            }
            Action::InstallSnapshot { meta } => {
                let (m, data) = member.disk.written_snapshot.as_ref().expect("installed");
                assert_eq!(*m, meta, "the driver installed another snapshot");
                member.machine = decode_machine(data);
                member.applied = (meta.last_index, meta.last_term);
                member.snapshot_index = meta.last_index;
                self.snapshots_installed += 1;
                if let Some(t) = &mut self.trace {
                    t.push(format!(
                        "{} n{id} installed snapshot {}@t{}",
                        self.now, meta.last_index, meta.last_term
                    ));
                }
                self.checker
                    .on_restore(id, &meta, machine_hash(&member.machine))
            }
            Action::ReadReady { id: read_id } => {
                let key = member.reads.remove(&read_id).expect("read registered");
                let value = member.machine.get(&key).copied();
                self.completions.push(Completion::ReadReady {
                    node: id,
                    id: read_id,
                    value,
                });
                Ok(())
            }
            Action::ReadFailed { id: read_id, .. } => {
                member.reads.remove(&read_id);
                self.completions.push(Completion::ReadFailed {
                    node: id,
                    id: read_id,
                });
                Ok(())
            }
            Action::Event(ev) => self.on_event(id, ev, removal_reports),
            other => unreachable!("the driver carries out {other:?} itself"),
        }
    }

    /// Takes a snapshot of `id`'s state machine once it applied
    /// `net.snapshot_every` entries since the last one, as a server would
    /// on its threshold: durable first, then the node is told (and
    /// compacts its log).
    pub(super) fn maybe_snapshot(&mut self, id: NodeId) {
        let every = self.net.snapshot_every;
        let member = self.members.get_mut(&id).expect("member");
        let (index, term) = member.applied;
        if every == 0 || index.0 < member.snapshot_index.0 + every || member.node.is_none() {
            return;
        }
        let data = encode_machine(&member.machine);
        let membership = member
            .node
            .as_ref()
            .expect("running")
            .membership_at(index)
            .expect("the applied index is not below the log start")
            .clone();
        let meta = SnapshotMeta {
            last_index: index,
            last_term: term,
            len: data.len() as u64,
            membership: Box::new(membership),
        };
        member.snapshot_index = index;
        member.disk.save_snapshot((meta.clone(), data));
        self.snapshots_taken += 1;
        let r = self
            .checker
            .on_snapshot(id, &meta, machine_hash(&member.machine));
        if let Err(v) = r {
            self.violation
                .get_or_insert(Violation(format!("at {}: {v}", self.now)));
        }
        let now = self.now;
        member
            .node
            .as_mut()
            .expect("running")
            .handle_snapshot_saved(now, meta);
        self.log_line(|| format!("n{id} snapshot {index}@t{term}"));
        self.after_input(id);
    }
}
