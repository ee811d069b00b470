//! The nodes, listed through kube's typed [`Api`] in pages of [`node::PAGE`] (`serve` watches
//! them instead).

use kube::Api;
use kube::api::ListParams;

use crate::cluster::node::{self, SlimNode};
use crate::cluster::probe::{Failure, with_timeout};

/// Every node, each reduced to what the capability decision needs.
pub(super) async fn list(client: &kube::Client) -> Result<Vec<SlimNode>, Failure> {
    let api: Api<SlimNode> = Api::all(client.clone());
    let mut params = ListParams::default().limit(node::PAGE);
    let mut nodes = Vec::new();
    loop {
        let page = with_timeout(api.list(&params)).await?;
        nodes.extend(page.items);
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(nodes),
        }
    }
}
