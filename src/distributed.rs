//! `mpirun -np N cnnc run model.cnn`: data-parallel training on N processes
//! ([`cnnc_runtime::dist`]). Under `mpirun` (seen in its environment) cnnc joins MPI's world
//! (the `mpi` feature); a cnnc built without it refuses to run as one of several processes,
//! which would each train their own model into the same files.
//!
//! Every process gives its compute threads an equal share of the machine's cores. Rank 0 alone
//! prints; an error on any process ends every process (`MPI_Abort`) with its exit status, so no
//! process waits forever for one that has stopped.

use crate::run::{fail, Failure, EXIT_INPUT};

/// `(rank, size, processes on this machine)` of a process that `mpirun` started: Open MPI's
/// variables, else those of MPICH's launcher (PMI).
fn launched() -> Option<(usize, usize, usize)> {
    let var = |names: &[&str]| names.iter().find_map(|n| std::env::var(n).ok()?.parse::<usize>().ok());
    let size = var(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"])?;
    let rank = var(&["OMPI_COMM_WORLD_RANK", "PMI_RANK"]).unwrap_or(0);
    let local = var(&["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]).unwrap_or(size);
    Some((rank, size, local))
}

/// MPI, while the command runs: dropping it ends MPI (`MPI_Finalize`).
#[derive(Default)]
pub struct Session {
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

/// Joins the processes that `mpirun` started, when it started more than one.
pub fn start() -> Result<Session, Failure> {
    let Some((_, size, local)) = launched().filter(|&(_, size, _)| size > 1) else { return Ok(Session::default()) };
    // The machine's cores, shared between the processes on it (unless the user chose).
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: no other thread runs yet (this is the command's first step).
        unsafe { std::env::set_var("MATMUL_NUM_THREADS", (cores / local.max(1)).max(1).to_string()) };
    }
    #[cfg(feature = "mpi")]
    {
        let _ = size;
        let (universe, level) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| fail(EXIT_INPUT, "MPI was started already"))?;
        if level < mpi::Threading::Serialized {
            return Err(fail(
                EXIT_INPUT,
                format!(
                    "this MPI library gives threading level {level:?}; cnnc's steps call MPI from a worker thread and \
                     need MPI_THREAD_SERIALIZED"
                ),
            ));
        }
        let world = universe.world();
        let grads = {
            use mpi::traits::Communicator;
            world.duplicate()
        };
        cnnc_runtime::dist::join(Box::new(World { world, grads, pending: std::sync::Mutex::new(Vec::new()) }));
        let session = Session { _universe: Some(universe) };
        bucket_size()?;
        Ok(session)
    }
    #[cfg(not(feature = "mpi"))]
    Err(fail(
        EXIT_INPUT,
        format!(
            "mpirun started {size} processes, and this cnnc was built without MPI: each would train its own copy into \
             the same files; build it with `cargo build --release --features mpi` (README: Training on several \
             processes)"
        ),
    ))
}

/// Reads `CNNC_BUCKET_KB` (the size of the gradient buckets sent during the backward pass; 0:
/// one sum after it) once, and checks that every process has the same: ranks that start
/// different sums would wait for each other forever.
#[cfg(feature = "mpi")]
fn bucket_size() -> Result<(), Failure> {
    let kb = match std::env::var("CNNC_BUCKET_KB") {
        Err(_) => cnnc_runtime::dist::BUCKET / 256,
        Ok(v) => v.trim().parse::<usize>().ok().filter(|&kb| kb <= 1 << 20).ok_or_else(|| {
            fail(
                EXIT_INPUT,
                format!("CNNC_BUCKET_KB is `{v}`: give a size in KB from 0 (one sum after the step) to 1048576"),
            )
        })?,
    };
    if let Some(g) = cnnc_runtime::dist::group() {
        let all = g.gather(&[kb as f64]);
        if all.iter().any(|&k| k != kb as f64) {
            let sizes: Vec<String> = all.iter().map(|k| format!("{k}")).collect();
            return Err(fail(
                EXIT_INPUT,
                format!(
                    "the processes have different CNNC_BUCKET_KB ({}): give every one the same (`mpirun -x \
                     CNNC_BUCKET_KB`)",
                    sizes.join(", ")
                ),
            ));
        }
    }
    cnnc_runtime::dist::set_bucket_len(kb * 256);
    Ok(())
}

/// Ends the command: rank 0 (or a lone process) reports as usual; on another rank only errors
/// are printed, named by rank. An error on any rank of a group ends the whole group.
/// MPI ends when `_session` drops, at the end.
pub fn finish(_session: Session, outcome: Result<(), Failure>) -> std::process::ExitCode {
    let (rank, _) = cnnc_runtime::dist::place();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(f) => {
            let from = if rank > 0 { format!("rank {rank}: ") } else { String::new() };
            eprintln!("error: {from}{}", f.message);
            match cnnc_runtime::dist::group() {
                Some(g) => g.abort(i32::from(f.code)),
                None => std::process::ExitCode::from(f.code),
            }
        }
    }
}

/// MPI's world, and a copy of it for the gradient sums started during the backward pass (which
/// may then come between the world's calls in a different order on each process).
#[cfg(feature = "mpi")]
struct World {
    world: mpi::topology::SimpleCommunicator,
    grads: mpi::topology::SimpleCommunicator,
    /// The sums started and not yet waited for.
    pending: std::sync::Mutex<Vec<mpi::ffi::MPI_Request>>,
}

#[cfg(feature = "mpi")]
impl World {
    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<mpi::ffi::MPI_Request>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// SAFETY: MPI runs at MPI_THREAD_SERIALIZED (checked in `start`), and cnnc calls the group from
// one thread at a time: the steps of one training run, in order.
#[cfg(feature = "mpi")]
unsafe impl Send for World {}
#[cfg(feature = "mpi")]
unsafe impl Sync for World {}

#[cfg(feature = "mpi")]
impl cnnc_runtime::dist::Group for World {
    fn rank(&self) -> usize {
        use mpi::traits::Communicator;
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        use mpi::traits::Communicator;
        self.world.size() as usize
    }

    fn sum(&self, buf: &mut [f32]) {
        use mpi::traits::CommunicatorCollectives;
        let local = buf.to_vec();
        self.world.all_reduce_into(&local[..], buf, mpi::collective::SystemOperation::sum());
    }

    fn gather(&self, local: &[f64]) -> Vec<f64> {
        use mpi::traits::CommunicatorCollectives;
        let mut all = vec![0.0; local.len() * self.size()];
        self.world.all_gather_into(local, &mut all[..]);
        all
    }

    fn broadcast(&self, buf: &mut [f32]) {
        use mpi::traits::{Communicator, Root};
        self.world.process_at_rank(0).broadcast_into(buf);
    }

    fn abort(&self, code: i32) -> ! {
        use mpi::traits::Communicator;
        self.world.abort(code)
    }

    unsafe fn start_sum(&self, send: &[f32], recv: &mut [f32]) {
        use mpi::raw::AsRaw;
        let mut request = std::mem::MaybeUninit::<mpi::ffi::MPI_Request>::uninit();
        // SAFETY: the buffers hold `send.len()` floats each and stay put until `wait_all` (the
        // caller's promise); the communicator lives as long as MPI.
        unsafe {
            mpi::ffi::MPI_Iallreduce(
                send.as_ptr().cast(),
                recv.as_mut_ptr().cast(),
                send.len().min(recv.len()) as i32,
                mpi::ffi::RSMPI_FLOAT,
                mpi::ffi::RSMPI_SUM,
                self.grads.as_raw(),
                request.as_mut_ptr(),
            );
            self.pending().push(request.assume_init());
        }
    }

    fn progress(&self) {
        let mut pending = self.pending();
        if pending.is_empty() {
            return;
        }
        let mut done = 0;
        // SAFETY: the requests are live ones this group started; MPI_Testall sets each finished
        // one to MPI_REQUEST_NULL.
        unsafe {
            mpi::ffi::MPI_Testall(
                pending.len() as i32,
                pending.as_mut_ptr(),
                &mut done,
                mpi::ffi::RSMPI_STATUSES_IGNORE,
            );
        }
    }

    fn wait_all(&self) {
        let mut pending = self.pending();
        // SAFETY: as in `progress`; afterwards every request is done and none is kept.
        unsafe {
            mpi::ffi::MPI_Waitall(pending.len() as i32, pending.as_mut_ptr(), mpi::ffi::RSMPI_STATUSES_IGNORE);
        }
        pending.clear();
    }
}
