//! Commands of PROTOCOL §21's social parts, flattened into `hush`'s top
//! level: `block`, `unblock`, `blocked`, `requests`, `accept`, `decline`,
//! `settings`.

use clap::{Subcommand, ValueEnum};

use super::ClientOpts;

#[derive(Debug, Subcommand)]
pub enum SocialCommand {
    /// Block USER: they cannot open a DM with you, invite you or message
    /// you in your DM; their messages in shared rooms are hidden from you.
    Block {
        #[command(flatten)]
        opts: ClientOpts,
        #[arg(value_name = "USER")]
        peer: String,
    },
    /// Stop blocking USER.
    Unblock {
        #[command(flatten)]
        opts: ClientOpts,
        #[arg(value_name = "USER")]
        peer: String,
    },
    /// List the users you block.
    Blocked {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// List message requests (DMs from people you share no room with) and invitations.
    Requests {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Accept a message request or a room invitation (ROOM: id, name, or @USER for a request).
    Accept {
        #[command(flatten)]
        opts: ClientOpts,
        room: String,
    },
    /// Decline a message request or a room invitation (ROOM: id, name, or @USER for a request).
    Decline {
        #[command(flatten)]
        opts: ClientOpts,
        room: String,
    },
    /// Show or change this identity's settings (read receipts, typing indicators).
    Settings {
        #[command(flatten)]
        opts: ClientOpts,
        /// `receipts` or `typing`; without it, show every setting.
        setting: Option<Setting>,
        /// `on` or `off`; without it, show the setting.
        value: Option<OnOff>,
    },
}

impl SocialCommand {
    pub fn opts(&self) -> &ClientOpts {
        match self {
            Self::Block { opts, .. }
            | Self::Unblock { opts, .. }
            | Self::Blocked { opts }
            | Self::Requests { opts }
            | Self::Accept { opts, .. }
            | Self::Decline { opts, .. }
            | Self::Settings { opts, .. } => opts,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Setting {
    /// Send read receipts (`delivered` receipts are always sent).
    Receipts,
    /// Send typing indicators.
    Typing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        crate::cli::Cli::command().debug_assert();
    }
}
