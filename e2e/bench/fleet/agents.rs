//! The fake agents of the measured namespace, apart from the bench's own work.

use mail_incident_e2e_support::{control_plane::cpu_seconds_of, fakes::FakeAgents, world::World};

/// The fake agents of one namespace, on a runtime of their own (threads named
/// `AGENT_THREADS`, whose CPU time the bench reads) with a client of their own. Stopped,
/// every task of theirs with them, when dropped.
pub struct Agents {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const AGENT_THREADS: &str = "fake-agents";

impl Agents {
    pub fn start(world: &'static World, namespace: &str) -> Self {
        let namespace = namespace.to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(AGENT_THREADS)
                .enable_all()
                .build()
                .expect("the fake agents' runtime");
            runtime.block_on(async move {
                let client = world.admin().await;
                let _agents = FakeAgents::start(client, &namespace).await;
                stopped.await.ok();
            });
            // Dropping the runtime ends the tasks the agents spawned for their watches.
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// CPU seconds the agents' runtime threads have used.
    pub fn cpu_seconds() -> f64 {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return 0.0;
        };
        tasks
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim() == AGENT_THREADS)
            })
            .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
            .map(|stat| cpu_seconds_of(&stat))
            .sum()
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.stop.take().map(|stop| stop.send(()));
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}
