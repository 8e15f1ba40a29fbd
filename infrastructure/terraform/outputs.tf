locals {
  namespaces = {
    orchestrator = temporalcloud_namespace.orchestrator
    it           = temporalcloud_namespace.it
    finance      = temporalcloud_namespace.finance
  }

  # The API-key gRPC address of each namespace (regional endpoint, or the namespace endpoint for HA
  # namespaces), as host:port. Port 7233 is added if the Cloud API returns a bare host.
  temporal_addresses = {
    for service, ns in local.namespaces : service => (
      length(regexall(":[0-9]+$", ns.endpoints.grpc_address)) > 0
      ? ns.endpoints.grpc_address
      : "${ns.endpoints.grpc_address}:7233"
    )
  }
}

# --- What each service's env file needs (deploy/env/cloud/<service>.env) ------------------------
# TEMPORAL_NAMESPACE is the namespace *id* (<name>.<account>), which is what SDK clients connect to.

output "orchestrator_env" {
  description = "Non-secret settings for deploy/env/cloud/orchestrator.env. The API key is in orchestrator_api_key."
  value = {
    TEMPORAL_ADDRESS            = local.temporal_addresses.orchestrator
    TEMPORAL_NAMESPACE          = temporalcloud_namespace.orchestrator.id
    TEMPORAL_TASK_QUEUE         = local.task_queues.orchestrator
    TEMPORAL_TLS                = "true"
    ORCHESTRATOR_TOOL_ENDPOINTS = join(",", [temporalcloud_nexus_endpoint.it.name, temporalcloud_nexus_endpoint.finance.name])
  }
}

output "it_env" {
  description = "Non-secret settings for deploy/env/cloud/it.env. The API key is in it_api_key."
  value = {
    TEMPORAL_ADDRESS    = local.temporal_addresses.it
    TEMPORAL_NAMESPACE  = temporalcloud_namespace.it.id
    TEMPORAL_TASK_QUEUE = local.task_queues.it
    TEMPORAL_TLS        = "true"
  }
}

output "finance_env" {
  description = "Non-secret settings for deploy/env/cloud/finance.env. The API key is in finance_api_key."
  value = {
    TEMPORAL_ADDRESS    = local.temporal_addresses.finance
    TEMPORAL_NAMESPACE  = temporalcloud_namespace.finance.id
    TEMPORAL_TASK_QUEUE = local.task_queues.finance
    TEMPORAL_TLS        = "true"
  }
}

# --- Secrets: TEMPORAL_API_KEY per service (terraform output -raw <service>_api_key) -----------

output "orchestrator_api_key" {
  description = "TEMPORAL_API_KEY for the orchestrator (write access to its namespace only)."
  value       = temporalcloud_apikey.orchestrator.token
  sensitive   = true
}

output "it_api_key" {
  description = "TEMPORAL_API_KEY for the IT tool service (write access to its namespace only)."
  value       = temporalcloud_apikey.it.token
  sensitive   = true
}

output "finance_api_key" {
  description = "TEMPORAL_API_KEY for the Finance tool service (write access to its namespace only)."
  value       = temporalcloud_apikey.finance.token
  sensitive   = true
}

# --- For operators ------------------------------------------------------------------------------

output "nexus_endpoint_ids" {
  description = "Ids of the Nexus endpoints, by endpoint name."
  value = {
    (temporalcloud_nexus_endpoint.it.name)      = temporalcloud_nexus_endpoint.it.id
    (temporalcloud_nexus_endpoint.finance.name) = temporalcloud_nexus_endpoint.finance.id
  }
}

output "web_addresses" {
  description = "Temporal Cloud UI address of each namespace."
  value       = { for service, ns in local.namespaces : service => ns.endpoints.web_address }
}
