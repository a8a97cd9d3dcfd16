//! `torito-cri`: a CRI client for the tests and the bench — the verbs of
//! crictl they use (crictl itself is not packaged in Debian), speaking
//! gRPC on containerd's socket as the kubelet does (`k8s-cri`'s types and
//! clients). One line of output a verb; errors on stderr, status 1.
//!
//! ```text
//! torito-cri --socket S version | images
//! torito-cri --socket S runp --name N --logs DIR [--handler H] [--host-network]      → pod id
//! torito-cri --socket S create --pod ID --pod-name N --logs DIR [--host-network]
//!                              --name C --image I [--memory BYTES] [-- ARGS]          → container id
//! torito-cri --socket S start ID | inspect ID | inspectp ID | stop ID [--timeout S] | rm ID | stopp ID | rmp ID
//! ```
//! `inspect` prints `state=<STATE> exit_code=N finished_at=NS`,
//! `inspectp` the pod's IP.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest, CreateContainerRequest,
    ImageSpec, LinuxContainerConfig, LinuxContainerResources, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListImagesRequest, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Parser)]
#[command(name = "torito-cri", about = "A CRI client (crictl's verbs the tests use)")]
struct Cli {
    /// containerd's socket.
    #[arg(long)]
    socket: PathBuf,
    #[command(subcommand)]
    verb: Verb,
}

/// What a pod is made of (RunPodSandbox and CreateContainer both send it).
#[derive(Args, Clone)]
struct Pod {
    /// The pod's name.
    #[arg(long = "pod-name", id = "pod-name")]
    name: String,
    /// The pod's log directory.
    #[arg(long)]
    logs: PathBuf,
    /// Use the host's network namespace (hostNetwork).
    #[arg(long)]
    host_network: bool,
}

#[derive(Subcommand)]
enum Verb {
    /// The runtime's name and version.
    Version,
    /// The images' tags, one a line.
    Images,
    /// RunPodSandbox; prints the pod's id.
    Runp {
        #[command(flatten)]
        pod: Pod,
        /// The runtime handler (containerd's runtime name).
        #[arg(long, default_value = "")]
        handler: String,
    },
    /// CreateContainer in a pod; prints the container's id.
    Create {
        /// The pod's id.
        #[arg(long)]
        pod: String,
        #[command(flatten)]
        config: Pod,
        /// The container's name.
        #[arg(long)]
        name: String,
        /// Its image.
        #[arg(long)]
        image: String,
        /// Its memory limit, bytes.
        #[arg(long)]
        memory: Option<i64>,
        /// Its arguments (the image's Cmd otherwise).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// StartContainer.
    Start { id: String },
    /// ContainerStatus: `state=… exit_code=… finished_at=…`.
    Inspect { id: String },
    /// PodSandboxStatus: the pod's IP.
    Inspectp { id: String },
    /// StopContainer.
    Stop {
        id: String,
        /// Seconds before SIGKILL.
        #[arg(long, default_value_t = 10)]
        timeout: i64,
    },
    /// RemoveContainer.
    Rm { id: String },
    /// StopPodSandbox.
    Stopp { id: String },
    /// RemovePodSandbox.
    Rmp { id: String },
}

fn pod_config(p: &Pod) -> PodSandboxConfig {
    let mode = if p.host_network { NamespaceMode::Node } else { NamespaceMode::Pod };
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: p.name.clone(),
            uid: format!("uid-{}", p.name),
            namespace: "default".into(),
            attempt: 0,
        }),
        // A hostNetwork pod shares the host's UTS namespace: no hostname.
        hostname: if p.host_network { String::new() } else { p.name.clone() },
        log_directory: p.logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption { network: mode as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn connect(sock: PathBuf) -> Result<Channel, String> {
    Endpoint::try_from("http://[::]:50051")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?)) }
        }))
        .await
        .map_err(|e| format!("cannot reach the CRI socket: {e}"))
}

async fn run(cli: Cli) -> Result<String, String> {
    let channel = connect(cli.socket).await?;
    let mut rs = RuntimeServiceClient::new(channel.clone());
    let err = |what: &str| {
        let what = what.to_string();
        move |e: tonic::Status| format!("{what}: {}", e.message())
    };
    Ok(match cli.verb {
        Verb::Version => {
            let v = rs
                .version(VersionRequest { version: "v1".into() })
                .await
                .map_err(err("Version"))?
                .into_inner();
            format!("{} {} (CRI {})", v.runtime_name, v.runtime_version, v.runtime_api_version)
        }
        Verb::Images => {
            let mut is = ImageServiceClient::new(channel);
            let images =
                is.list_images(ListImagesRequest::default()).await.map_err(err("ListImages"))?.into_inner();
            images.images.iter().flat_map(|i| i.repo_tags.iter().cloned()).collect::<Vec<_>>().join("\n")
        }
        Verb::Runp { pod, handler } => {
            let req = RunPodSandboxRequest { config: Some(pod_config(&pod)), runtime_handler: handler };
            rs.run_pod_sandbox(req).await.map_err(err("RunPodSandbox"))?.into_inner().pod_sandbox_id
        }
        Verb::Create { pod, config, name, image, memory, args } => {
            let container = ContainerConfig {
                metadata: Some(ContainerMetadata { name: name.clone(), attempt: 0 }),
                image: Some(ImageSpec { image, ..Default::default() }),
                args,
                log_path: format!("{name}.log"),
                linux: Some(LinuxContainerConfig {
                    resources: memory
                        .map(|m| LinuxContainerResources { memory_limit_in_bytes: m, ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let req = CreateContainerRequest {
                pod_sandbox_id: pod,
                config: Some(container),
                sandbox_config: Some(pod_config(&config)),
            };
            rs.create_container(req).await.map_err(err("CreateContainer"))?.into_inner().container_id
        }
        Verb::Start { id } => {
            rs.start_container(StartContainerRequest { container_id: id })
                .await
                .map_err(err("StartContainer"))?;
            String::new()
        }
        Verb::Inspect { id } => {
            let req = ContainerStatusRequest { container_id: id, verbose: false };
            let s = rs.container_status(req).await.map_err(err("ContainerStatus"))?.into_inner().status;
            let s = s.ok_or("ContainerStatus: no status")?;
            let state = ContainerState::try_from(s.state).map_or("UNKNOWN", |st| st.as_str_name());
            format!("state={state} exit_code={} finished_at={}", s.exit_code, s.finished_at)
        }
        Verb::Inspectp { id } => {
            let req = PodSandboxStatusRequest { pod_sandbox_id: id, verbose: false };
            let s = rs.pod_sandbox_status(req).await.map_err(err("PodSandboxStatus"))?.into_inner().status;
            s.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default()
        }
        Verb::Stop { id, timeout } => {
            let req = StopContainerRequest { container_id: id, timeout };
            rs.stop_container(req).await.map_err(err("StopContainer"))?;
            String::new()
        }
        Verb::Rm { id } => {
            rs.remove_container(RemoveContainerRequest { container_id: id })
                .await
                .map_err(err("RemoveContainer"))?;
            String::new()
        }
        Verb::Stopp { id } => {
            let req = StopPodSandboxRequest { pod_sandbox_id: id };
            rs.stop_pod_sandbox(req).await.map_err(err("StopPodSandbox"))?;
            String::new()
        }
        Verb::Rmp { id } => {
            let req = RemovePodSandboxRequest { pod_sandbox_id: id };
            rs.remove_pod_sandbox(req).await.map_err(err("RemovePodSandbox"))?;
            String::new()
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("torito-cri: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("torito-cri: {e}");
            ExitCode::FAILURE
        }
    }
}
