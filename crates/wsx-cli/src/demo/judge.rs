//! The demo judge: grades a Python solution of one problem, case by case, and publishes
//! each verdict to the submission's channel the moment that case finishes.
//!
//! Each case runs `python3` in a child process with an empty environment, a fresh
//! temporary working directory, a wall-clock limit, and rlimits (CPU time, address space,
//! no child processes, file size, open files). The rlimits are set by a few lines of
//! Python that then `exec` the solution, so this crate needs no `unsafe` `pre_exec`.
//! Started as root, the child drops to `nobody` when the interpreter is reachable by
//! other users (root ignores the process limit). None of this makes it a sandbox for
//! untrusted code: the README says so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tracing::{debug, warn};
use wsx_hub::Payload;

/// Judge limits.
#[derive(Debug, Clone)]
pub struct JudgeConfig {
    /// The interpreter (looked up on `PATH`).
    pub python: String,
    /// Wall-clock time per case.
    pub time_limit: Duration,
    /// Address-space limit per case, bytes.
    pub memory_limit: u64,
    /// Cases run at once (over all submissions).
    pub parallel: usize,
    /// Largest submission, bytes.
    pub max_code: usize,
    /// Output kept per case, bytes; more is a runtime error.
    pub max_output: usize,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            python: "python3".into(),
            time_limit: Duration::from_secs(2),
            memory_limit: 256 << 20,
            parallel: 4,
            max_code: 64 << 10,
            max_output: 4 << 20,
        }
    }
}

/// One test case.
struct Case {
    input: Bytes,
    expected: String,
    label: String,
}

/// A case's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// AC, WA, TLE or RE.
    pub verdict: &'static str,
    /// Wall-clock milliseconds.
    pub time_ms: u64,
    /// Why, for WA and RE (the last line of stderr, say).
    pub detail: String,
}

/// Why a submission is refused: an HTTP status and a message.
pub type Refused = (u16, String);

/// The judge.
pub struct Judge {
    hub: Arc<wsx_hub::Hub>,
    cfg: JudgeConfig,
    /// The interpreter's full path and version, or why there is none.
    python: Result<(PathBuf, String), String>,
    cases: Vec<Case>,
    slots: Arc<Semaphore>,
    next: AtomicU64,
    /// Runs in flight by session: (submission, task).
    runs: Mutex<HashMap<String, (u64, tokio::task::AbortHandle)>>,
}

/// The namespace of the judge's channels.
pub const NAMESPACE: &str = "judge";

const SAMPLE: &str = r#"import sys

def main():
    data = sys.stdin.buffer.read().split()
    n, q = int(data[0]), int(data[1])
    prefix = [0] * (n + 1)
    for i in range(n):
        prefix[i + 1] = prefix[i] + int(data[2 + i])
    out = []
    pos = 2 + n
    for _ in range(q):
        l, r = int(data[pos]), int(data[pos + 1])
        pos += 2
        out.append(prefix[r] - prefix[l - 1])
    print("\n".join(map(str, out)))

main()
"#;

const STATEMENT: &str = "You are given n integers a[1] … a[n] and q queries. Each query \
is two indices l ≤ r: answer with the sum a[l] + … + a[r].\n\nInput: the first line holds n \
and q (1 ≤ n, q ≤ 100 000), the second a[1] … a[n] (|a[i]| ≤ 10⁹), and each of the next q \
lines one query, l and r (1 ≤ l ≤ r ≤ n).\n\nOutput: q lines, the answers in order.";

/// Sets the limits, drops root where it can, and runs `solution.py`. Arguments: CPU
/// seconds, address-space bytes, file-size bytes.
const LAUNCHER: &str = r#"import os, resource, sys
cpu, mem, fsize = (int(a) for a in sys.argv[1:4])
def limit(what, value):
    resource.setrlimit(what, (value, value))
limit(resource.RLIMIT_CORE, 0)
limit(resource.RLIMIT_FSIZE, fsize)
limit(resource.RLIMIT_NOFILE, 32)
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
limit(resource.RLIMIT_AS, mem)
def reachable(path):
    # Others may read the file and search every directory above it.
    path = os.path.realpath(path)
    if not os.stat(path).st_mode & 0o004:
        return False
    while path != os.path.dirname(path):
        path = os.path.dirname(path)
        if not os.stat(path).st_mode & 0o001:
            return False
    return True
if os.getuid() == 0 and reachable(sys.executable) and reachable(os.__file__):
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
limit(resource.RLIMIT_NPROC, 0)
os.execv(sys.executable, [sys.executable, "-I", "-S", "solution.py"])
"#;

/// A small deterministic generator (splitmix64) for the test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn make_case(seed: u64, n: usize, q: usize, max_abs: i64) -> Case {
    use std::fmt::Write;
    let mut rng = Rng(seed);
    let a: Vec<i64> = (0..n)
        .map(|_| rng.below(2 * max_abs as u64 + 1) as i64 - max_abs)
        .collect();
    let mut prefix = vec![0i64; n + 1];
    for i in 0..n {
        prefix[i + 1] = prefix[i] + a[i];
    }
    let mut input = format!("{n} {q}\n");
    let nums: Vec<String> = a.iter().map(i64::to_string).collect();
    input.push_str(&nums.join(" "));
    input.push('\n');
    let mut expected = String::new();
    for _ in 0..q {
        let l = rng.below(n as u64) as usize + 1;
        let r = l + rng.below((n - l + 1) as u64) as usize;
        let _ = writeln!(input, "{l} {r}");
        let _ = writeln!(expected, "{}", prefix[r] - prefix[l - 1]);
    }
    Case {
        input: Bytes::from(input),
        expected,
        label: format!("n = {n}, q = {q}"),
    }
}

/// The problem's cases: small and large mixed, so that they finish out of order when run
/// in parallel.
fn cases() -> Vec<Case> {
    let sample = Case {
        input: Bytes::from_static(b"5 3\n1 2 3 4 5\n1 5\n2 3\n4 4\n"),
        expected: "15\n5\n4\n".into(),
        label: "sample".into(),
    };
    let shapes: &[(usize, usize, i64)] = &[
        (100_000, 100_000, 1_000_000_000),
        (1, 1, 5),
        (10, 10, 10),
        (50_000, 50_000, 1_000),
        (100, 1_000, 1_000_000_000),
        (1_000, 100, 1),
        (100_000, 10, 1_000_000_000),
        (10, 100_000, 1_000_000_000),
        (2_000, 2_000, 1_000_000),
        (30_000, 30_000, 1_000_000_000),
        (7, 28, 0),
    ];
    std::iter::once(sample)
        .chain(
            shapes
                .iter()
                .enumerate()
                .map(|(i, &(n, q, m))| make_case(0x5EED + i as u64, n, q, m)),
        )
        .collect()
}

/// The interpreter's path and version, asked of it with the server's own environment.
fn find_python(python: &str) -> Result<(PathBuf, String), String> {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sys; print(sys.executable); print(sys.version.split()[0])",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{python}` was not found on the server ({e}): install Python 3 to grade submissions"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    match (out.status.success(), lines.next(), lines.next()) {
        (true, Some(path), Some(version)) if !path.is_empty() => {
            Ok((PathBuf::from(path), version.to_string()))
        }
        _ => Err(format!(
            "`{python}` did not run: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Removes a submission's directory when the run ends or is cancelled.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Judge {
    /// A judge publishing through `hub`; `disabled` says why it may not run code here.
    pub fn new(hub: Arc<wsx_hub::Hub>, cfg: JudgeConfig, disabled: Option<String>) -> Judge {
        let python = match disabled {
            Some(why) => Err(why),
            None => find_python(&cfg.python),
        };
        if let Err(why) = &python {
            warn!("demo judge unavailable: {why}");
        }
        Judge {
            hub,
            slots: Arc::new(Semaphore::new(cfg.parallel.max(1))),
            cfg,
            python,
            cases: cases(),
            next: AtomicU64::new(1),
            runs: Mutex::new(HashMap::new()),
        }
    }

    /// The problem as the page shows it.
    pub fn problem(&self) -> Value {
        json!({
            "title": "Range sums",
            "statement": STATEMENT,
            "sample_solution": SAMPLE,
            "cases": self.cases.iter().enumerate().map(|(i, c)| json!({"case": i + 1, "label": c.label})).collect::<Vec<_>>(),
            "time_limit_ms": self.cfg.time_limit.as_millis() as u64,
            "memory_limit_mb": self.cfg.memory_limit >> 20,
            "python": self.python.as_ref().ok().map(|(_, v)| v.clone()),
            "unavailable": self.python.as_ref().err(),
            "namespace": NAMESPACE,
        })
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, tokio::task::AbortHandle)>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start grading `code` for `session` (cancelling that session's previous run);
    /// verdicts go to the channel `judge:<session>`. Returns the submission number.
    pub fn submit(self: &Arc<Self>, session: &str, code: String) -> Result<u64, Refused> {
        let (python, _) = self.python.clone().map_err(|why| (503, why))?;
        let valid = (8..=64).contains(&session.len())
            && session
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err((400, "session: 8 to 64 letters, digits, - or _".into()));
        }
        if code.len() > self.cfg.max_code {
            return Err((
                413,
                format!("the code is limited to {} bytes", self.cfg.max_code),
            ));
        }
        let submission = self.next.fetch_add(1, Ordering::Relaxed);
        let channel = format!("{NAMESPACE}:{session}");
        let judge = self.clone();
        let session_key = session.to_string();
        let mut runs = self.runs();
        let cancelled = runs.remove(session).map(|(old, task)| {
            task.abort();
            old
        });
        let task = tokio::spawn(async move {
            if let Some(old) = cancelled {
                judge
                    .publish(&channel, json!({"submission": old, "cancelled": true}))
                    .await;
            }
            judge.grade(submission, &channel, &python, &code).await;
            let mut runs = judge.runs();
            if runs
                .get(&session_key)
                .is_some_and(|(n, _)| *n == submission)
            {
                runs.remove(&session_key);
            }
        });
        runs.insert(session.to_string(), (submission, task.abort_handle()));
        Ok(submission)
    }

    async fn publish(&self, channel: &str, v: Value) {
        if let Err(e) = self
            .hub
            .publish(channel, Payload::json(v.to_string()))
            .await
        {
            warn!(channel, error = %e, "demo judge could not publish");
        }
    }

    async fn grade(&self, submission: u64, channel: &str, python: &Path, code: &str) {
        let total = self.cases.len();
        self.publish(
            channel,
            json!({"submission": submission, "status": "running", "cases": total}),
        )
        .await;
        let dir =
            std::env::temp_dir().join(format!("wsx-judge-{}-{submission}", std::process::id()));
        let prepared = prepare(&dir, code);
        let _cleanup = WorkDir(dir.clone());
        if let Err(e) = prepared {
            warn!(error = %e, "demo judge cannot write the submission");
            self.publish(
                channel,
                json!({"submission": submission, "error": format!("cannot write the submission: {e}")}),
            ).await;
            return;
        }
        let mut running: FuturesUnordered<_> = self
            .cases
            .iter()
            .enumerate()
            .map(|(i, case)| {
                let dir = &dir;
                async move {
                    let Ok(_slot) = self.slots.acquire().await else {
                        return (i, internal("the judge is shutting down"));
                    };
                    (i, run_case(&self.cfg, python, dir, case).await)
                }
            })
            .collect();
        let mut passed = 0;
        while let Some((i, v)) = running.next().await {
            debug!(submission, case = i + 1, verdict = v.verdict, "judged");
            passed += usize::from(v.verdict == "AC");
            self.publish(
                channel,
                json!({"submission": submission, "case": i + 1, "verdict": v.verdict, "time_ms": v.time_ms, "detail": v.detail}),
            ).await;
        }
        self.publish(
            channel,
            json!({"submission": submission, "done": true, "passed": passed, "total": total}),
        )
        .await;
    }
}

fn prepare(dir: &Path, code: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let file = dir.join("solution.py");
    std::fs::write(&file, code)?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))
}

fn internal(why: &str) -> Verdict {
    Verdict {
        verdict: "RE",
        time_ms: 0,
        detail: why.into(),
    }
}

/// Read `r` to its end keeping at most `max` bytes; with `strict`, more is an error.
async fn collect(
    mut r: impl tokio::io::AsyncRead + Unpin,
    max: usize,
    strict: bool,
) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = max - kept.len();
        if strict && n > room {
            return Err(std::io::Error::other("output limit exceeded"));
        }
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
}

/// Run one case: feed the input, collect the output, apply the limits.
async fn run_case(cfg: &JudgeConfig, python: &Path, dir: &Path, case: &Case) -> Verdict {
    let cpu_secs = cfg.time_limit.as_secs() + 1;
    let mut child = match tokio::process::Command::new(python)
        .args(["-I", "-S", "-c", LAUNCHER])
        .arg(cpu_secs.to_string())
        .arg(cfg.memory_limit.to_string())
        .arg(cfg.max_output.to_string())
        .current_dir(dir)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return internal(&format!("cannot start python: {e}")),
    };
    let start = Instant::now();
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return internal("no pipes to the child");
    };
    let input = case.input.clone();
    let feed = async move {
        // A solution may exit without reading everything: a broken pipe is its business.
        let _ = stdin.write_all(&input).await;
        drop(stdin);
    };
    let max_output = cfg.max_output;
    let mut err = Vec::new();
    let mut out = Vec::new();
    let finished = tokio::time::timeout(cfg.time_limit, async {
        let feed = async {
            feed.await;
            Ok(())
        };
        // Past the output limit the run stops at once (a RE); stderr past 64 KiB is
        // read and dropped, so a chatty solution never blocks on a full pipe.
        let (_, o, e) = tokio::try_join!(
            feed,
            collect(stdout, max_output, true),
            collect(stderr, 64 << 10, false)
        )
        .map_err(|e| e.to_string())?;
        (out, err) = (o, e);
        child.wait().await.map_err(|e| e.to_string())
    })
    .await;
    let time_ms = start.elapsed().as_millis() as u64;
    let status = match finished {
        Err(_elapsed) => {
            let _ = child.kill().await;
            return Verdict {
                verdict: "TLE",
                time_ms,
                detail: format!("over {} ms", cfg.time_limit.as_millis()),
            };
        }
        Ok(Err(why)) => {
            let _ = child.kill().await;
            return Verdict {
                verdict: "RE",
                time_ms,
                detail: why,
            };
        }
        Ok(Ok(status)) => status,
    };
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        // SIGXCPU (24) or SIGKILL after the CPU limit.
        if matches!(status.signal(), Some(24) | Some(9)) {
            return Verdict {
                verdict: "TLE",
                time_ms,
                detail: "CPU time limit".into(),
            };
        }
        let stderr = String::from_utf8_lossy(&err);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        let detail = match (last, status.code(), status.signal()) {
            (Some(line), _, _) => line.trim().chars().take(200).collect(),
            (None, Some(code), _) => format!("exit code {code}"),
            (None, None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None, None) => "failed".into(),
        };
        return Verdict {
            verdict: "RE",
            time_ms,
            detail,
        };
    }
    let got = String::from_utf8_lossy(&out);
    if got
        .split_ascii_whitespace()
        .eq(case.expected.split_ascii_whitespace())
    {
        Verdict {
            verdict: "AC",
            time_ms,
            detail: String::new(),
        }
    } else {
        let first = got.split_ascii_whitespace().next().unwrap_or("(nothing)");
        Verdict {
            verdict: "WA",
            time_ms,
            detail: format!(
                "output starts with {}",
                first.chars().take(40).collect::<String>()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge_case(code: &str, case: &Case, time_limit: Duration) -> Verdict {
        judge_with("python3", code, case, time_limit)
    }

    fn judge_with(python: &str, code: &str, case: &Case, time_limit: Duration) -> Verdict {
        let (python, _) = find_python(python).expect("python3 is needed for the judge tests");
        let cfg = JudgeConfig {
            time_limit,
            ..JudgeConfig::default()
        };
        let dir = std::env::temp_dir().join(format!(
            "wsx-judge-test-{}-{}",
            std::process::id(),
            code.len()
        ));
        prepare(&dir, code).unwrap();
        let _cleanup = WorkDir(dir.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_case(&cfg, &python, &dir, case))
    }

    fn sample() -> Case {
        cases().remove(0)
    }

    #[test]
    fn the_sample_solution_passes_every_case() {
        let (python, _) = find_python("python3").unwrap();
        let cfg = JudgeConfig::default();
        let dir = std::env::temp_dir().join(format!("wsx-judge-all-{}", std::process::id()));
        prepare(&dir, SAMPLE).unwrap();
        let _cleanup = WorkDir(dir.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for (i, case) in cases().iter().enumerate() {
            let v = rt.block_on(run_case(&cfg, &python, &dir, case));
            assert_eq!(v.verdict, "AC", "case {}: {v:?}", i + 1);
        }
    }

    #[test]
    fn verdicts_wrong_answer_runtime_error_time_limit() {
        let t = Duration::from_secs(2);
        let v = judge_case("print(42)\n", &sample(), t);
        assert_eq!(
            (v.verdict, v.detail.as_str()),
            ("WA", "output starts with 42")
        );
        let v = judge_case("import sys\nprint(1 // 0)\n", &sample(), t);
        assert_eq!(v.verdict, "RE");
        assert!(v.detail.contains("ZeroDivisionError"), "{v:?}");
        let v = judge_case(
            "while True:\n    pass\n",
            &sample(),
            Duration::from_millis(700),
        );
        assert_eq!(v.verdict, "TLE", "{v:?}");
        assert!(v.time_ms < 2000, "{v:?}");
    }

    #[test]
    fn memory_and_environment_are_limited() {
        let t = Duration::from_secs(5);
        // 1 GiB is over the 256 MiB address-space limit.
        let v = judge_case("x = bytearray(1 << 30)\nprint(len(x))\n", &sample(), t);
        assert_eq!(v.verdict, "RE", "{v:?}");
        assert!(v.detail.contains("MemoryError"), "{v:?}");
        // The environment is empty (Python may add LC_CTYPE itself).
        let v = judge_case(
            "import os\nprint('PATH' in os.environ, 'HOME' in os.environ)\n",
            &Case {
                input: Bytes::new(),
                expected: "False False".into(),
                label: String::new(),
            },
            t,
        );
        assert_eq!(v.verdict, "AC", "{v:?}");
    }

    #[test]
    fn output_past_the_limit_is_a_runtime_error_and_stderr_never_blocks() {
        let t = Duration::from_secs(5);
        // 5 MiB to stdout, over the 4 MiB limit: stopped, not left to time out.
        let v = judge_case(
            "import sys\nsys.stdout.write('x' * (5 << 20))\n",
            &sample(),
            t,
        );
        assert_eq!(
            (v.verdict, v.detail.as_str()),
            ("RE", "output limit exceeded"),
            "{v:?}"
        );
        // 1 MiB to stderr (kept: 64 KiB) and a wrong answer: judged as such.
        let v = judge_case(
            "import sys\nsys.stderr.write('e' * (1 << 20))\nprint(42)\n",
            &sample(),
            t,
        );
        assert_eq!(v.verdict, "WA", "{v:?}");
    }

    #[test]
    fn no_child_processes_and_no_root() {
        // The system interpreter is reachable by `nobody`, so a judge started as root
        // drops to it; either way the process limit holds.
        if !Path::new("/usr/bin/python3").exists() {
            panic!("/usr/bin/python3 is needed for this test (apt install python3)");
        }
        let t = Duration::from_secs(5);
        let v = judge_with("/usr/bin/python3", "import os\nos.fork()\n", &sample(), t);
        assert_eq!(v.verdict, "RE", "{v:?}");
        assert!(v.detail.contains("BlockingIOError"), "{v:?}");
        let v = judge_with(
            "/usr/bin/python3",
            "import os\nprint(os.getuid() != 0)\n",
            &Case {
                input: Bytes::new(),
                expected: "True".into(),
                label: String::new(),
            },
            t,
        );
        assert_eq!(v.verdict, "AC", "{v:?}");
    }
}
