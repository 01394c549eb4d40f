//! The scheduler behind the server: one worker thread owns the [`Ensemble`] and serves a
//! bounded queue of jobs. Scoring requests waiting together are grouped into one
//! `score_questions` call (the engine batches its passes); generations decode together, one
//! token of every active sequence per batched forward pass over their own KV caches (a new
//! sequence's prompt joins the same pass). A job whose client has gone (its reply channel
//! closed) is dropped before it runs, and an active generation is dropped at the next token.
//! Test: `pytest tests/test_serve.py` and `cargo test -p lora-ens-cli --test serve`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use lora_ens::data::Question;
use lora_ens::ensemble::Ensemble;
use lora_ens::generate::{Decoding, GenerateOptions, StepEvent};
use lora_ens::questions::{Record, ScoringSpec};
use lora_ens::score::ScoreOptions;
use lora_ens::{Error, Result};
use tokio::sync::{mpsc, oneshot};

use super::metrics::Metrics;

/// The server's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests waiting to start (not yet scored, or not yet decoding) before new ones get
    /// 429.
    pub max_queue: usize,
    /// Sequences decoded together, one token each per forward pass.
    pub max_generations: usize,
    /// Questions scored in one engine call (several requests' questions together).
    pub max_batch_questions: usize,
    /// The engine's `batch_size` for scoring (questions per forward pass of the base alone).
    pub score_batch_size: usize,
    /// The largest `max_tokens` a request may ask for.
    pub max_tokens: usize,
    /// The longest prompt in tokens (never more than the model's context length minus one).
    pub max_prompt_tokens: usize,
    /// The largest request body in bytes.
    pub max_body_bytes: usize,
    /// The most questions in one `/v1/score` request.
    pub max_questions: usize,
    /// A request still running after this long is answered 504 and its work dropped.
    pub request_timeout: std::time::Duration,
    /// A pause after every decoding step (zero in service; tests use it to hold requests
    /// in flight long enough to disconnect, fill the queue or signal the server).
    pub step_delay: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_queue: 128,
            max_generations: 16,
            max_batch_questions: 64,
            score_batch_size: 16,
            max_tokens: 512,
            max_prompt_tokens: usize::MAX,
            max_body_bytes: 1 << 20,
            max_questions: 256,
            request_timeout: std::time::Duration::from_secs(300),
            step_delay: std::time::Duration::ZERO,
        }
    }
}

/// What a generation's client receives: each step's event, or the error that ended it.
pub type GenMessage = std::result::Result<StepEvent, String>;

/// One unit of work for the worker.
enum Job {
    Score {
        questions: Vec<Question>,
        spec: ScoringSpec,
        members: bool,
        reply: oneshot::Sender<Result<Vec<Record>>>,
    },
    Generate {
        prompt: Vec<u32>,
        opts: GenerateOptions,
        events: mpsc::UnboundedSender<GenMessage>,
    },
}

/// Why a job was not queued.
#[derive(Debug)]
pub enum Rejected {
    /// The queue is full: try again later.
    Full,
    /// The worker has stopped (the server is shutting down).
    Stopped,
}

/// The handle the HTTP side holds: submit jobs, read the queue's state.
pub struct Engine {
    ens: Arc<Ensemble>,
    tx: Mutex<Option<std_mpsc::Sender<Job>>>,
    queued: Arc<AtomicUsize>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// The limits the server enforces.
    pub limits: Limits,
    /// Request and engine counters (`/metrics`).
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("ensemble", &self.ens)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Engine {
    /// Start the worker thread that owns `ens`.
    pub fn start(ens: Ensemble, limits: Limits) -> Result<Arc<Self>> {
        let ens = Arc::new(ens);
        let (tx, rx) = std_mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::new(Metrics::new(ens.n_members()));
        let worker = Worker {
            ens: Arc::clone(&ens),
            rx,
            queued: Arc::clone(&queued),
            metrics: Arc::clone(&metrics),
            limits: limits.clone(),
            scores: VecDeque::new(),
            waiting: VecDeque::new(),
            active: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("lora-ens-worker".to_owned())
            .spawn(move || worker.run())
            .map_err(|e| Error::Input(format!("cannot start the worker thread: {e}")))?;
        Ok(Arc::new(Self {
            ens,
            tx: Mutex::new(Some(tx)),
            queued,
            worker: Mutex::new(Some(handle)),
            limits,
            metrics,
        }))
    }

    /// The ensemble (for tokenizing and model facts; the worker runs the passes).
    pub fn ensemble(&self) -> &Ensemble {
        &self.ens
    }

    /// Requests waiting to start.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    fn submit(&self, job: Job) -> std::result::Result<(), Rejected> {
        let guard = self.tx.lock().map_err(|_| Rejected::Stopped)?;
        let tx = guard.as_ref().ok_or(Rejected::Stopped)?;
        let before = self.queued.fetch_add(1, Ordering::SeqCst);
        if before >= self.limits.max_queue {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Rejected::Full);
        }
        tx.send(job).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            Rejected::Stopped
        })
    }

    /// Queue questions to score; the receiver gets the records (in order) or the error.
    pub fn score(
        &self,
        questions: Vec<Question>,
        spec: ScoringSpec,
        members: bool,
    ) -> std::result::Result<oneshot::Receiver<Result<Vec<Record>>>, Rejected> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Score {
            questions,
            spec,
            members,
            reply,
        })?;
        Ok(rx)
    }

    /// Queue a generation; the receiver gets one event per step, the last with `finish`.
    /// Dropping the receiver cancels the generation.
    pub fn generate(
        &self,
        prompt: Vec<u32>,
        opts: GenerateOptions,
    ) -> std::result::Result<mpsc::UnboundedReceiver<GenMessage>, Rejected> {
        let (events, rx) = mpsc::unbounded_channel();
        self.submit(Job::Generate {
            prompt,
            opts,
            events,
        })?;
        Ok(rx)
    }

    /// Stop taking jobs and wait until the worker has finished what it had.
    pub fn shutdown(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let handle = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A scoring job taken off the channel.
struct ScoreJob {
    questions: Vec<Question>,
    spec: ScoringSpec,
    members: bool,
    reply: oneshot::Sender<Result<Vec<Record>>>,
}

/// A generation taken off the channel, not yet decoding.
struct Waiting {
    prompt: Vec<u32>,
    opts: GenerateOptions,
    events: mpsc::UnboundedSender<GenMessage>,
}

/// A generation being decoded.
struct Active {
    decoding: Decoding,
    events: mpsc::UnboundedSender<GenMessage>,
}

struct Worker {
    ens: Arc<Ensemble>,
    rx: std_mpsc::Receiver<Job>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    limits: Limits,
    scores: VecDeque<ScoreJob>,
    waiting: VecDeque<Waiting>,
    active: Vec<Active>,
}

impl Worker {
    fn run(mut self) {
        let mut open = true;
        loop {
            let idle = self.scores.is_empty() && self.waiting.is_empty() && self.active.is_empty();
            if idle {
                if !open {
                    return;
                }
                match self.rx.recv() {
                    Ok(job) => self.take(job),
                    Err(_) => return, // every sender gone and nothing left to do
                }
            }
            loop {
                match self.rx.try_recv() {
                    Ok(job) => self.take(job),
                    Err(std_mpsc::TryRecvError::Empty) => break,
                    Err(std_mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.score_batch();
            self.admit();
            self.decode_step();
        }
    }

    fn take(&mut self, job: Job) {
        match job {
            Job::Score {
                questions,
                spec,
                members,
                reply,
            } => self.scores.push_back(ScoreJob {
                questions,
                spec,
                members,
                reply,
            }),
            Job::Generate {
                prompt,
                opts,
                events,
            } => self.waiting.push_back(Waiting {
                prompt,
                opts,
                events,
            }),
        }
    }

    fn started(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::SeqCst);
    }

    /// Score the waiting requests with the first one's spec, up to the batch's question
    /// budget (at least one request).
    fn score_batch(&mut self) {
        // Requests whose client has gone are dropped unscored.
        let before = self.scores.len();
        self.scores.retain(|j| !j.reply.is_closed());
        let gone = before - self.scores.len();
        self.started(gone);
        let Some(first) = self.scores.front() else {
            return;
        };
        let (spec, members) = (first.spec, first.members);
        let mut batch = Vec::new();
        let mut n_questions = 0;
        let mut rest = VecDeque::new();
        while let Some(job) = self.scores.pop_front() {
            let fits = batch.is_empty()
                || n_questions + job.questions.len() <= self.limits.max_batch_questions;
            if job.spec == spec && job.members == members && fits {
                n_questions += job.questions.len();
                batch.push(job);
            } else {
                rest.push_back(job);
            }
        }
        self.scores = rest;
        self.started(batch.len());
        let opts = ScoreOptions {
            batch_size: self.limits.score_batch_size,
            progress: None,
        };
        let all: Vec<Question> = batch
            .iter()
            .flat_map(|j| j.questions.iter().cloned())
            .collect();
        let mut batch = batch;
        match self.ens.score_questions(&all, &spec, &opts) {
            Ok(scores) => {
                let mut at = 0;
                for job in batch {
                    let n = job.questions.len();
                    let records = (at..at + n).map(|i| scores.record(i, members)).collect();
                    at += n;
                    let _ = job.reply.send(Ok(records));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(job) = batch.pop() {
                    let _ = job.reply.send(Err(e));
                }
            }
            Err(_) => {
                // One request's question spoiled the batch: score each alone, so only its
                // own request gets the error.
                for job in batch {
                    let r = self
                        .ens
                        .score_questions(&job.questions, &spec, &opts)
                        .map(|s| (0..s.len()).map(|i| s.record(i, members)).collect());
                    let _ = job.reply.send(r);
                }
            }
        }
    }

    /// Move waiting generations into free decoding slots.
    fn admit(&mut self) {
        while self.active.len() < self.limits.max_generations {
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            self.started(1);
            if w.events.is_closed() {
                continue;
            }
            match self.ens.start(w.prompt, &w.opts) {
                Ok(decoding) if decoding.is_done() => {
                    // max_tokens 0: finished before the first token.
                    let _ = w.events.send(Ok(StepEvent {
                        token: None,
                        text: String::new(),
                        finish: Some(decoding.generation().finish_reason),
                    }));
                }
                Ok(decoding) => self.active.push(Active {
                    decoding,
                    events: w.events,
                }),
                Err(e) => {
                    let _ = w.events.send(Err(e.to_string()));
                }
            }
        }
        self.metrics.set_active_generations(self.active.len());
    }

    /// One token of every active generation, in one pass; finished and abandoned ones leave.
    fn decode_step(&mut self) {
        self.active.retain(|a| !a.events.is_closed());
        if self.active.is_empty() {
            self.metrics.set_active_generations(0);
            return;
        }
        let mut refs: Vec<&mut Decoding> =
            self.active.iter_mut().map(|a| &mut a.decoding).collect();
        match self.ens.step(&mut refs) {
            Ok(events) => {
                let mut tokens = 0;
                for (a, event) in self.active.iter_mut().zip(events) {
                    if let Some(event) = event {
                        tokens += usize::from(event.token.is_some());
                        let _ = a.events.send(Ok(event));
                    }
                }
                self.metrics.add_tokens(tokens);
                if !self.limits.step_delay.is_zero() {
                    std::thread::sleep(self.limits.step_delay);
                }
                self.active.retain(|a| !a.decoding.is_done());
            }
            Err(e) => {
                let msg = e.to_string();
                for a in self.active.drain(..) {
                    let _ = a.events.send(Err(msg.clone()));
                }
            }
        }
        self.metrics.set_active_generations(self.active.len());
    }
}
