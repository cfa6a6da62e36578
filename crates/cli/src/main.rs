//! `easel`: serve the API locally, generate images, manage API keys.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use easel_cli::local::{DevKey, LocalServer, ServeConfig};
use easel_cli::runtime::{load_moderator, load_pipeline};
use easel_core::generator::{GenerationSpec, Generator, ProgressSink};
use easel_core::keys::create_key;
use easel_core::png::encode_png;
use easel_core::ports::KeyStore;
use easel_core::request::resolve_seeds;
use easel_core::worker::WorkerConfig;
use easel_embedded::{EmbeddedBackend, EmbeddedOptions};
use time::OffsetDateTime;

#[derive(Debug, Parser)]
#[command(
    name = "easel",
    version,
    about = "A self-hostable text-to-image API: local server, generator and key management"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the API and a worker in one process, on embedded backends (SQLite and files).
    Serve(ServeArgs),
    /// Generate images from the command line, without a server.
    Generate(GenerateArgs),
    /// Manage API keys: the local data folder's, or a deployed stack's with --aws-table.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Run the AWS worker as a long-running SQS consumer (GPU hosts): the same code as the worker
    /// function, configured by the same environment variables (docs/configuration.md).
    Worker {
        /// Poll the jobs queue until SIGTERM (required: the event-fed form is the Lambda function).
        #[arg(long)]
        poll: bool,
    },
    /// Show what a model folder contains and its defaults.
    Models {
        #[arg(long, env = "EASEL_MODEL_DIR", default_value = "models/easel-shapes")]
        model: PathBuf,
    },
}

#[derive(Debug, Args)]
struct DataArgs {
    /// Folder for the database and images.
    #[arg(long, env = "EASEL_DATA_DIR", default_value = ".easel/data", global = true)]
    data_dir: PathBuf,
    /// Manage the keys of a deployed stack instead: its DynamoDB table (the TasksTableName
    /// output), with AWS credentials and region from the usual AWS environment.
    #[arg(long, env = "EASEL_TABLE", global = true)]
    aws_table: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[arg(long, env = "EASEL_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    #[command(flatten)]
    data: DataArgs,
    /// Model folder (diffusers/optimum ONNX layout).
    #[arg(long, env = "EASEL_MODEL_DIR", default_value = "models/easel-shapes")]
    model: PathBuf,
    /// Base URL clients use to reach this server, for image links [default: http://ADDR].
    #[arg(long, env = "EASEL_PUBLIC_URL")]
    public_url: Option<String>,
    /// Lifetime of image URLs, in seconds.
    #[arg(long, env = "EASEL_URL_TTL_SECONDS", default_value_t = 3600)]
    url_ttl_seconds: u64,
    /// How long the synchronous dialects (OpenAI, basic textToImage) wait for an image before
    /// answering 202 with the task's URL, in seconds.
    #[arg(long, env = "EASEL_SYNC_WAIT_SECONDS", default_value_t = 300)]
    sync_wait_seconds: u64,
    /// Submissions each API key may make per minute (a token bucket); 0 = unlimited.
    #[arg(long, env = "EASEL_RATE_LIMIT_PER_MINUTE", default_value_t = 0)]
    rate_limit_per_minute: u32,
    /// How many submissions a key may make at once before the per-minute rate applies
    /// [default: the per-minute rate].
    #[arg(long, env = "EASEL_RATE_LIMIT_BURST")]
    rate_limit_burst: Option<u32>,
    /// Receives of one job before it goes to the dead-letter queue.
    #[arg(long, env = "EASEL_MAX_RECEIVES", default_value_t = 3)]
    max_receives: u32,
    /// Where the development API key is written on first start.
    #[arg(long, env = "EASEL_DEV_KEY_FILE", default_value = ".easel/dev-api-key")]
    dev_key_file: PathBuf,
    /// Let callbacks and image URLs go to plain http on loopback (127.0.0.1, ::1, localhost), for
    /// trying callbacks locally. Never on a shared host.
    #[arg(long, env = "EASEL_ALLOW_LOOPBACK_CALLBACKS", default_value_t = false)]
    allow_loopback_callbacks: bool,
    /// Accept and queue tasks without running them (no model is loaded).
    #[arg(long)]
    no_worker: bool,
    /// Where the model runs: cpu, cuda or cuda:N (needs an ONNX Runtime with CUDA).
    #[arg(long, env = "EASEL_DEVICE", default_value = "cpu")]
    device: easel_diffusion::Device,
    /// The image moderation model: NudeNet's 320n.onnx, which `make setup` installs (AGPL-3.0),
    /// or another NudeNet-compatible YOLOv8 export. Required: images are never served unjudged.
    #[arg(long, env = "EASEL_MODERATION_MODEL", default_value = ".easel/models/nudenet/320n.onnx")]
    moderation_model: PathBuf,
    /// Which detector classes flag an image, from which score: CLASS=SCORE,…
    /// [default: ANUS_EXPOSED=0.35,BUTTOCKS_EXPOSED=0.45,FEMALE_BREAST_EXPOSED=0.45,
    /// FEMALE_GENITALIA_EXPOSED=0.35,MALE_GENITALIA_EXPOSED=0.35]
    #[arg(long, env = "EASEL_MODERATION_THRESHOLDS", value_parser = easel_core::moderation::ClassThresholds::parse)]
    moderation_thresholds: Option<easel_core::moderation::ClassThresholds>,
    /// The prompt policy: `default` (the built-in lists), `off`, or a policy file's path
    /// (format: crates/core/data/prompt-policy.txt).
    #[arg(long, env = "EASEL_PROMPT_POLICY", default_value = "default")]
    prompt_policy: String,
    /// Check negative prompts against the prompt policy too.
    #[arg(long, env = "EASEL_PROMPT_POLICY_NEGATIVE", default_value_t = false)]
    prompt_policy_negative: bool,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print its secret (shown once).
    Create {
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
    /// Print the secret a key's callbacks are signed with (Standard Webhooks, `whsec_…`), for the
    /// receiver to verify them.
    CallbackSecret { id: String },
    /// Give a key a new callback secret. Callbacks carry a second signature made with the old one
    /// for the grace period, so receivers can switch without dropping any.
    RotateCallbackSecret {
        id: String,
        /// How long the old secret keeps signing, in hours.
        #[arg(long, default_value_t = 24)]
        grace_hours: u64,
    },
}

#[derive(Debug, Args)]
struct GenerateArgs {
    prompt: String,
    /// Negative prompt: what the images should not show.
    #[arg(long, default_value = "")]
    negative: String,
    #[arg(long, env = "EASEL_MODEL_DIR", default_value = "models/easel-shapes")]
    model: PathBuf,
    /// Where the model runs: cpu, cuda or cuda:N (needs an ONNX Runtime with CUDA).
    #[arg(long, env = "EASEL_DEVICE", default_value = "cpu")]
    device: easel_diffusion::Device,
    /// Sampler, by its Stability name (DDIM, DDPM, PNDM, K_EULER, K_EULER_ANCESTRAL, K_HEUN,
    /// K_DPM_2, K_DPM_2_ANCESTRAL, K_LMS, K_DPMPP_2M, K_DPMPP_2S_ANCESTRAL) [default: the model's].
    #[arg(long)]
    sampler: Option<easel_core::generator::SamplerKind>,
    /// Use Karras σs (K_ samplers except K_EULER_ANCESTRAL) [default: the model's config].
    #[arg(long)]
    karras: Option<bool>,
    /// A Stability style preset (anime, photographic, pixel-art...).
    #[arg(long)]
    style: Option<String>,
    /// Start from this image (PNG, JPEG or WebP), resized to --size (img2img).
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// img2img: how much of the init image to replace, in (0, 1].
    #[arg(long, default_value_t = 0.8, requires = "init_image")]
    strength: f32,
    /// Initial latents as a .npy file of float32 `[n, channels, height/8, width/8]` unit noise
    /// (diffusers' `latents=`), instead of noise from the seeds.
    #[arg(long)]
    latents: Option<PathBuf>,
    /// Denoising steps [default: the model's].
    #[arg(long)]
    steps: Option<u32>,
    /// Classifier-free guidance scale [default: the model's].
    #[arg(long)]
    guidance: Option<f32>,
    /// Seed of the first image; the others use seed+1, seed+2… 0, as in the API dialects, means
    /// a random seed [default: random].
    #[arg(long)]
    seed: Option<u64>,
    /// Image size as WIDTHxHEIGHT [default: the model's native size].
    #[arg(long)]
    size: Option<String>,
    /// Number of images.
    #[arg(long, default_value_t = 1)]
    n: u32,
    #[arg(long, default_value = "out")]
    out: PathBuf,
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("EASEL_LOG").unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn,ort=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if std::env::var("EASEL_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Generate(args) => generate(args).await,
        Command::Keys { command, data } => keys(command, data).await,
        Command::Worker { poll } => worker(poll).await,
        Command::Models { model } => models(model),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let prompt_policy = easel_core::prompt_policy::PromptPolicy::from_setting(&args.prompt_policy)
        .map_err(|e| anyhow::anyhow!("EASEL_PROMPT_POLICY / --prompt-policy: {e}"))?
        .checking_negative(args.prompt_policy_negative);
    let (generator, moderator): (Option<Arc<dyn Generator>>, Arc<dyn easel_core::moderation::Moderator>) = if args
        .no_worker
    {
        // Nothing is generated, so nothing needs judging.
        (None, Arc::new(easel_core::moderation::Unmoderated))
    } else {
        let (model, device) = (args.model.clone(), args.device);
        let (moderation_model, thresholds) = (
            args.moderation_model.clone(),
            args.moderation_thresholds.clone().unwrap_or_else(easel_core::moderation::ClassThresholds::nudenet_default),
        );
        let (pipeline, moderator) = tokio::task::spawn_blocking(move || {
            anyhow::Ok((load_pipeline(&model, device)?, load_moderator(&moderation_model, thresholds)?))
        })
        .await??;
        (Some(pipeline), moderator)
    };
    let config = ServeConfig {
        addr: args.addr,
        data_dir: args.data.data_dir,
        public_url: args.public_url,
        url_ttl: Duration::from_secs(args.url_ttl_seconds),
        sync_wait: Duration::from_secs(args.sync_wait_seconds),
        rate_limit: (args.rate_limit_per_minute > 0).then(|| easel_api::RateLimit {
            per_minute: args.rate_limit_per_minute,
            burst: args.rate_limit_burst.unwrap_or(args.rate_limit_per_minute),
        }),
        max_receives: args.max_receives,
        worker: WorkerConfig::default(),
        dev_key_file: Some(args.dev_key_file),
        shutdown_grace: Duration::from_secs(30),
        outbound: easel_cli::local::Guard::new(Duration::from_secs(10), 0)
            .allow_loopback(args.allow_loopback_callbacks),
        callback_in_flight: Duration::from_secs(60),
        callback_schedule: easel_core::notify::RetrySchedule::default(),
        moderator,
        prompt_policy: Arc::new(prompt_policy),
    };
    let server = LocalServer::start(config, generator).await?;
    let addr = server.addr();
    match server.dev_key() {
        DevKey::Created { secret, file } => {
            println!("Created a development API key (shown once, also saved to {}):\n\n    {secret}\n", file.display())
        }
        DevKey::Existing { file } if file.exists() => println!("Development API key: in {}", file.display()),
        _ => {}
    }
    println!("easel is ready on http://{addr} (started in {} ms). Ctrl-C stops it.", started.elapsed().as_millis());
    tracing::info!(%addr, ready_ms = started.elapsed().as_millis() as u64, "ready");
    wait_for_signal().await;
    println!("Shutting down…");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn worker(poll: bool) -> anyhow::Result<()> {
    if !poll {
        bail!("`easel worker` runs only as a poller: add --poll (on Lambda, the worker function is fed by SQS)");
    }
    let config = easel_fn_worker::Config::from_env()?;
    easel_fn_worker::poll(&config).await.map_err(|e| anyhow::anyhow!(e))
}

async fn keys(command: KeysCommand, data: DataArgs) -> anyhow::Result<()> {
    let store: Arc<dyn KeyStore> = match &data.aws_table {
        Some(table) => {
            let sdk = easel_aws::AwsBackend::load_sdk_config().await;
            Arc::new(easel_aws::DynamoKeyStore::for_table(&sdk, table))
        }
        None => {
            let options = EmbeddedOptions { public_base_url: String::new(), max_receives: 3, notice_max_receives: 8 };
            EmbeddedBackend::open(&data.data_dir, &options)?.keys
        }
    };
    let store: &dyn KeyStore = store.as_ref();
    match command {
        KeysCommand::Create { name } => {
            let new = create_key(store, &name).await?;
            println!("id:               {}", new.key.id);
            println!("name:             {}", new.key.name);
            println!("secret:           {}   (shown once: store it now)", new.secret);
            println!("callback secret:  {}", new.key.callback_secret);
        }
        KeysCommand::List => {
            for key in store.list().await? {
                let state = match key.revoked_at {
                    Some(at) => format!("revoked {at}"),
                    None => "active".to_owned(),
                };
                println!("{}\t{}\t{}\t{}", key.id, key.name, key.created_at, state);
            }
        }
        KeysCommand::Revoke { id } => {
            if !store.revoke(&id, OffsetDateTime::now_utc()).await? {
                bail!("no key with id {id}");
            }
            println!("revoked {id}");
        }
        KeysCommand::CallbackSecret { id } => {
            let key = store.get(&id).await?.ok_or_else(|| anyhow::anyhow!("no key with id {id}"))?;
            println!("{}", key.callback_secret);
        }
        KeysCommand::RotateCallbackSecret { id, grace_hours } => {
            let grace = Duration::from_secs(grace_hours.saturating_mul(3600));
            let key = easel_core::keys::rotate_callback_secret(store, &id, grace, OffsetDateTime::now_utc())
                .await?
                .ok_or_else(|| anyhow::anyhow!("no key with id {id}"))?;
            println!("callback secret:  {}", key.callback_secret);
            if let Some(until) = key.previous_callback_secret_until {
                println!("the previous secret also signs callbacks until {until}");
            }
        }
    }
    Ok(())
}

fn models(model: PathBuf) -> anyhow::Result<()> {
    let pipeline = load_pipeline(&model, easel_diffusion::Device::Cpu)?;
    println!("{}", serde_json::to_string_pretty(pipeline.descriptor())?);
    Ok(())
}

struct BarSink(indicatif::ProgressBar);

impl ProgressSink for BarSink {
    fn step(&self, done: u32, total: u32) {
        self.0.set_length(u64::from(total));
        self.0.set_position(u64::from(done));
    }
}

fn parse_size(s: &str) -> anyhow::Result<(u32, u32)> {
    let (w, h) = s.split_once(['x', 'X']).context("--size must look like 512x512")?;
    Ok((w.trim().parse().context("--size width")?, h.trim().parse().context("--size height")?))
}

async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    if args.n == 0 || args.n > 16 {
        bail!("--n must be from 1 to 16");
    }
    let (model, device) = (args.model.clone(), args.device);
    let pipeline = tokio::task::spawn_blocking(move || load_pipeline(&model, device)).await??;
    let d = pipeline.descriptor().clone();
    let (width, height) = match &args.size {
        Some(s) => parse_size(s)?,
        None => (d.native_width, d.native_height),
    };
    let seeds = resolve_seeds(args.seed, args.n);
    let (prompt, negative_prompt) = match &args.style {
        Some(style) => easel_core::presets::apply(style, &args.prompt, &args.negative)?,
        None => (args.prompt, args.negative),
    };
    let init_image = match &args.init_image {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(easel_core::png::decode_image(&bytes).with_context(|| format!("--init-image {}", path.display()))?)
        }
        None => None,
    };
    let latents = match &args.latents {
        Some(path) => Some(
            ndarray_npy::read_npy::<_, ndarray::Array4<f32>>(path)
                .with_context(|| format!("--latents {}: expected a float32 4-D .npy file", path.display()))?,
        ),
        None => None,
    };
    let spec = GenerationSpec {
        prompt,
        negative_prompt,
        width,
        height,
        steps: args.steps.unwrap_or(d.default_steps),
        guidance: args.guidance.unwrap_or(d.default_guidance),
        seeds,
        sampler: args.sampler,
        karras: args.karras,
        strength: if init_image.is_some() { args.strength } else { 1.0 },
        init_image,
    };
    let sampler = pipeline.sampler_for(&spec);
    let bar = indicatif::ProgressBar::new(u64::from(spec.steps));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} {pos}/{len} UNet evaluations {wide_bar} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(sampler.to_string());
    let started = Instant::now();
    let overrides = easel_diffusion::Overrides { latents, step_noise: None, posterior_noise: None };
    let generation = tokio::task::spawn_blocking({
        let pipeline = Arc::clone(&pipeline);
        let bar = bar.clone();
        move || pipeline.generate_with(&spec, &overrides, &BarSink(bar))
    })
    .await??;
    bar.finish_and_clear();
    for warning in &generation.warnings {
        eprintln!("warning: {warning}");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    for image in &generation.images {
        let path = args.out.join(format!("{}.png", image.seed));
        std::fs::write(&path, encode_png(image)?).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}  seed {}", path.display(), image.seed);
    }
    println!(
        "{} image(s) {}x{} with {sampler} in {:.2} s ({} UNet calls)",
        generation.images.len(),
        width,
        height,
        started.elapsed().as_secs_f64(),
        generation.unet_calls
    );
    Ok(())
}
