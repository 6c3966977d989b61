//! Entry point: parse the command line and run one subcommand.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use hush::cli::{Cli, ClientOpts, Command, LogFormat, ServeArgs};
use hush::client::commands;
use hush::store::Store;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let reads_typed_input = matches!(cli.command, Command::Chat { .. });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let outcome = runtime.block_on(run(cli));
    if reads_typed_input {
        // `hush chat` reads standard input on a blocking thread that cannot
        // be cancelled: waiting for it at shutdown kept the process alive
        // after /quit until another line (or the end) of input came.
        runtime.shutdown_background();
    }
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(opts) = client_opts(&cli.command) {
        hush::client::tls::init(opts.ca_cert.as_deref())?;
    }
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Keys { opts, command } => commands::keys(&opts, &command).await,
        Command::Register { opts, invite } => commands::register(&opts, invite.as_deref()).await,
        Command::Room { opts, command } => commands::room(&opts, &command).await,
        Command::Send { opts, args } => commands::send(&opts, &args).await,
        Command::Edit { opts, args } => commands::edit(&opts, &args).await,
        Command::Delete { opts, args } => commands::delete(&opts, &args).await,
        Command::React { opts, args } => commands::react(&opts, &args).await,
        Command::Timer { opts, args } => commands::timer(&opts, &args).await,
        Command::Read { opts, args } => commands::read(&opts, &args).await,
        Command::Search { opts, args } => commands::search(&opts, &args).await,
        Command::Chat { opts } => hush::client::chat::run(&opts).await,
        Command::Logout { opts } => commands::logout(&opts).await,
        Command::Social(command) => hush::client::social::run(&command).await,
        Command::Admin(args) => hush::admin::run(&args).await,
    }
}

fn client_opts(command: &Command) -> Option<&ClientOpts> {
    match command {
        Command::Keys { opts, .. }
        | Command::Register { opts, .. }
        | Command::Room { opts, .. }
        | Command::Send { opts, .. }
        | Command::Edit { opts, .. }
        | Command::Delete { opts, .. }
        | Command::React { opts, .. }
        | Command::Timer { opts, .. }
        | Command::Read { opts, .. }
        | Command::Search { opts, .. }
        | Command::Chat { opts }
        | Command::Logout { opts } => Some(opts),
        Command::Social(command) => Some(command.opts()),
        Command::Serve(_) | Command::Admin(_) => None,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.log_level, args.log_format)?;
    let config = args
        .server_config()
        .context("loading the TLS certificate")?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let shutdown = shutdown_signal();
    let store = Store::open_with(&args.db, args.durability.into())
        .await
        .with_context(|| format!("opening database {}", args.db))?;
    let listener =
        hush::server::bind(args.addr).with_context(|| format!("listening on {}", args.addr))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, db = %args.db, registration = ?config.registration, "hush listening on {scheme}://{local} with database {}", args.db);
    hush::server::run(listener, store, config, shutdown).await;
    tracing::info!("hush stopped");
    Ok(())
}

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(filter).with_context(|| format!("invalid log filter {filter:?}"))?;
    // tungstenite logs whole frames (auth tokens included) at trace: cap it
    // at debug, without raising it above what the filter asks for.
    let cap = filter
        .max_level_hint()
        .unwrap_or(LevelFilter::OFF)
        .min(LevelFilter::DEBUG);
    let filter = filter.add_directive(
        format!("tungstenite={cap}")
            .parse()
            .expect("a valid directive"),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed here, before
/// the server starts: installed on the future's first poll, a SIGTERM that
/// came early (a supervisor stopping a server that just came up) killed the
/// process without a clean shutdown.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler works");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler works");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    }
}
