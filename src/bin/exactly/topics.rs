//! `exactly topics ...`

use anyhow::Context as _;
use clap::Subcommand;
use exactly::client::admin::Admin;
use exactly::client::Client;

#[derive(Debug, Subcommand)]
pub(crate) enum TopicsCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Topic configuration, `key=value` (repeatable).
        #[arg(long = "config", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
        /// Succeed if the topic already exists.
        #[arg(long)]
        if_not_exists: bool,
    },
    /// Delete topics.
    Delete {
        /// Topic names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List topics with their partition count.
    List {
        /// Include internal topics.
        #[arg(long)]
        internal: bool,
    },
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

pub(crate) async fn run(client: Client, cmd: TopicsCommand) -> anyhow::Result<()> {
    let admin = Admin::new(client.clone());
    match cmd {
        TopicsCommand::Create {
            name,
            partitions,
            configs,
            if_not_exists,
        } => {
            let configs: Vec<(&str, &str)> = configs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            match admin.create_topic(&name, partitions, &configs).await {
                Ok(()) => println!("created topic {name} with {partitions} partitions"),
                Err(exactly::client::ClientError::Broker { code, .. })
                    if if_not_exists
                        && code.code == exactly::client::types::codes::TOPIC_ALREADY_EXISTS =>
                {
                    println!("topic {name} already exists");
                }
                Err(e) => return Err(e).with_context(|| format!("cannot create topic {name}")),
            }
        }
        TopicsCommand::Delete { names } => {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            admin
                .delete_topics(&refs)
                .await
                .with_context(|| format!("cannot delete {}", names.join(", ")))?;
            for name in names {
                println!("deleted topic {name}");
            }
        }
        TopicsCommand::List { internal } => {
            for topic in client.topics().await.context("cannot list topics")? {
                if topic.internal && !internal {
                    continue;
                }
                println!("{}\t{}", topic.name, topic.partitions.len());
            }
        }
    }
    Ok(())
}
