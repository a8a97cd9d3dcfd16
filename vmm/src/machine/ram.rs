//! Guest RAM whose registration with KVM waits until the guest runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::Scope;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{lock, spawn};
use crate::error::Error;
use crate::sandbox::{Role, Sandbox};
use crate::vstate::{DeferredRam, Vm};

/// RAM whose registration with KVM was deferred, registered on another
/// thread started at the guest's first exit: that is after `kernel_main`
/// (hello's first console write, say), so launch-to-KernelMain does not pay
/// for starting the thread, and a guest that stops at once never needs the
/// rest of its RAM registered. A guest access to unregistered RAM reaches
/// the monitor as MMIO; the vCPU thread then waits for the registration and
/// performs that one access itself ([`PendingRam::read`], [`PendingRam::write`]).
pub struct PendingRam {
    ranges: Vec<(u64, u64)>,
    state: Mutex<RamState>,
    done: Condvar,
    accesses: AtomicU64,
    sandbox: Sandbox,
}

enum RamState {
    Deferred(DeferredRam),
    Registering,
    Done(Result<(), Error>),
}

impl PendingRam {
    /// `deferred` RAM, to be registered later on a thread that `sandbox`
    /// confines.
    pub fn new(deferred: DeferredRam, sandbox: Sandbox) -> Self {
        let ranges = deferred.ranges();
        let state = if deferred.is_empty() { RamState::Done(Ok(())) } else { RamState::Deferred(deferred) };
        Self { ranges, state: Mutex::new(state), done: Condvar::new(), accesses: AtomicU64::new(0), sandbox }
    }

    /// Start registering on a thread of `scope`, if that has not started;
    /// `hold`, if any, is let go once that thread runs (see
    /// `Machine::spawn`).
    pub fn start<'scope, 'env>(
        &'scope self,
        scope: &'scope Scope<'scope, 'env>,
        vm: &'scope Vm,
        hold: Option<crate::sandbox::Hold<'scope>>,
    ) {
        let mut g = lock(&self.state);
        if !matches!(*g, RamState::Deferred(_)) {
            return;
        }
        let RamState::Deferred(d) = std::mem::replace(&mut *g, RamState::Registering) else { return };
        drop(g);
        let started = spawn(scope, "ram", move || {
            drop(hold);
            let r = self.sandbox.enter(Role::Ram).and_then(|()| vm.register(&d));
            *lock(&self.state) = RamState::Done(r);
            self.done.notify_all();
        });
        if let Err(e) = started {
            *lock(&self.state) = RamState::Done(Err(e));
            self.done.notify_all();
        }
    }

    /// Whether `addr` lies in the deferred RAM.
    pub fn contains(&self, addr: u64) -> bool {
        self.ranges.iter().any(|&(start, size)| addr >= start && addr - start < size)
    }

    /// Wait until the registration, if started, is done; its error, once.
    pub fn wait(&self) -> Result<(), Error> {
        let mut g = lock(&self.state);
        while matches!(*g, RamState::Registering) {
            g = self.done.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        match &mut *g {
            RamState::Done(r) => std::mem::replace(r, Ok(())),
            _ => Ok(()),
        }
    }

    /// A guest load from deferred RAM at `addr`, done by the monitor once
    /// the RAM is registered (registration started here if need be).
    pub fn read<'scope, 'env>(
        &'scope self,
        scope: &'scope Scope<'scope, 'env>,
        vm: &'scope Vm,
        mem: &GuestMemoryMmap,
        addr: u64,
        data: &mut [u8],
    ) -> Result<(), Error> {
        self.start(scope, vm, None);
        self.wait()?;
        self.accesses.fetch_add(1, Ordering::Relaxed);
        if mem.read_slice(data, GuestAddress(addr)).is_err() {
            data.fill(0xff);
        }
        Ok(())
    }

    /// A guest store to deferred RAM at `addr`, as [`PendingRam::read`].
    pub fn write<'scope, 'env>(
        &'scope self,
        scope: &'scope Scope<'scope, 'env>,
        vm: &'scope Vm,
        mem: &GuestMemoryMmap,
        addr: u64,
        data: &[u8],
    ) -> Result<(), Error> {
        self.start(scope, vm, None);
        self.wait()?;
        self.accesses.fetch_add(1, Ordering::Relaxed);
        let _ = mem.write_slice(data, GuestAddress(addr));
        Ok(())
    }

    /// Guest accesses the vCPU threads performed themselves.
    pub fn accesses(&self) -> u64 {
        self.accesses.load(Ordering::Relaxed)
    }
}
