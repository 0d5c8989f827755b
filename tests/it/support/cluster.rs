//! A Ballista cluster of real processes on 127.0.0.1, as an operator starts one: a
//! `sluice cluster scheduler` and `sluice cluster executor`s, each with its own ports, work
//! folder and log file. Executors get no `AWS_*` variables: what they reach of object
//! storage, they reach with what the client sends. Dropped, every process is killed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::s3::free_port;

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    scheduler: Child,
    executors: Vec<Option<Child>>,
    slots: usize,
    memory: Option<String>,
    /// How many times each executor was started (its log and work folder are per start).
    started: Vec<usize>,
}

impl TestCluster {
    /// A scheduler and `executors` executors of `slots` slots each, with `--memory-limit
    /// memory` when given; returns once every executor polls the scheduler.
    pub fn start(executors: usize, slots: usize, memory: Option<&str>) -> TestCluster {
        // (An executor killed by a test is taken for dead after 20 s, not Ballista's 180: not
        // much less, or a busy machine's live executor may be taken for dead.)
        TestCluster::start_with(executors, slots, memory, "20s")
    }

    /// As [`TestCluster::start`], the scheduler taking an executor silent for
    /// `executor_timeout` for dead.
    pub fn start_with(
        executors: usize,
        slots: usize,
        memory: Option<&str>,
        executor_timeout: &str,
    ) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let bind = format!("127.0.0.1:{port}");
        let scheduler = spawn(
            &[
                "cluster",
                "scheduler",
                "--bind",
                &bind,
                "--executor-timeout",
                executor_timeout,
            ],
            dir.path().join("scheduler.log"),
        );
        wait_for(
            || std::net::TcpStream::connect(&bind).is_ok(),
            "the scheduler to listen",
        );
        let mut cluster = TestCluster {
            dir,
            port,
            scheduler,
            executors: Vec::new(),
            slots,
            memory: memory.map(str::to_string),
            started: Vec::new(),
        };
        for i in 0..executors {
            cluster.executors.push(None);
            cluster.started.push(0);
            cluster.start_executor(i);
        }
        cluster
    }

    /// Starts executor `i` afresh (its own ports, work folder and log); returns once it polls
    /// the scheduler.
    fn start_executor(&mut self, i: usize) {
        self.started[i] += 1;
        let work = self
            .dir
            .path()
            .join(format!("work-{i}-{}", self.started[i]));
        let bind = format!("127.0.0.1:{}", self.port);
        let grpc = format!("127.0.0.1:{}", free_port());
        let flight = free_port().to_string();
        let slots = self.slots.to_string();
        let mut args = vec![
            "cluster",
            "executor",
            "--scheduler",
            &bind,
            "--bind",
            &grpc,
            "--flight-port",
            &flight,
            "--slots",
            &slots,
            "--work-dir",
            work.to_str().unwrap(),
        ];
        if let Some(m) = &self.memory {
            args.extend(["--memory-limit", m]);
        }
        let child = spawn(&args, self.executor_log_path(i));
        self.executors[i] = Some(child);
        wait_for(
            || self.executor_log(i).contains("Starting poll work loop"),
            "an executor to poll the scheduler",
        );
    }

    /// Starts again each executor that was killed or has stopped (the scheduler stops one it
    /// took for dead).
    pub fn revive_executors(&mut self) {
        for i in 0..self.executors.len() {
            let running = self.executors[i]
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            if !running {
                self.kill_executor(i);
                self.start_executor(i);
            }
        }
    }

    /// The scheduler's URL, as `[settings] cluster` takes it.
    pub fn url(&self) -> String {
        format!("df://127.0.0.1:{}", self.port)
    }

    fn executor_log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("executor-{i}-{}.log", self.started[i]))
    }

    /// What executor `i` logged (since it was last started).
    pub fn executor_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.executor_log_path(i)).unwrap_or_default()
    }

    /// The tasks executor `i` received.
    pub fn tasks_run(&self, i: usize) -> usize {
        self.executor_log(i).matches("Received task").count()
    }

    /// What the scheduler logged.
    pub fn scheduler_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("scheduler.log")).unwrap_or_default()
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) executor `i`: a frozen executor takes
    /// tasks but runs none, until it is taken for dead.
    pub fn freeze_executor(&self, i: usize, frozen: bool) {
        let pid = self.executors[i].as_ref().expect("a running executor").id();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// kill -9 of executor `i`.
    pub fn kill_executor(&mut self, i: usize) {
        if let Some(mut c) = self.executors[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for c in self.executors.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.scheduler.kill();
        let _ = self.scheduler.wait();
    }
}

/// Starts `sluice ARGS` with its output in `log`, at info level, without `AWS_*` variables.
fn spawn(args: &[&str], log: PathBuf) -> Child {
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args)
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(file);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.spawn().expect("the sluice binary starts")
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
