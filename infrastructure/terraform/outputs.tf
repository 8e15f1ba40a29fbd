locals {
  # The API-key gRPC address of each namespace (regional endpoint, or the namespace endpoint for HA
  # namespaces), as host:port, by service. Port 7233 is added if the Cloud API returns a bare host.
  grpc_addresses = merge(
    { orchestrator = temporalcloud_namespace.orchestrator.endpoints.grpc_address },
    { for service, ns in temporalcloud_namespace.team : service => ns.endpoints.grpc_address },
  )
  temporal_addresses = {
    for service, address in local.grpc_addresses : service => (
      length(regexall(":[0-9]+$", address)) > 0 ? address : "${address}:7233"
    )
  }
}

# --- What each service's env file needs (deploy/env/cloud/<service>.env) ------------------------
# TEMPORAL_NAMESPACE is the namespace *id* (<name>.<account>), which is what SDK clients connect to.

output "orchestrator_env" {
  description = "Non-secret settings for deploy/env/cloud/orchestrator.env. The API key is in orchestrator_api_key."
  value = {
    TEMPORAL_ADDRESS            = local.temporal_addresses["orchestrator"]
    TEMPORAL_NAMESPACE          = temporalcloud_namespace.orchestrator.id
    TEMPORAL_TASK_QUEUE         = local.orchestrator_task_queue
    TEMPORAL_TLS                = "true"
    ORCHESTRATOR_TOOL_ENDPOINTS = join(",", [for service in sort(keys(var.teams)) : temporalcloud_nexus_endpoint.team[service].name])
  }
}

output "team_env" {
  description = "Non-secret settings for each team's deploy/env/cloud/<service>.env, by service (terraform output -json team_env). The API keys are in team_api_keys."
  value = {
    for service, team in var.teams : service => {
      TEMPORAL_ADDRESS    = local.temporal_addresses[service]
      TEMPORAL_NAMESPACE  = temporalcloud_namespace.team[service].id
      TEMPORAL_TASK_QUEUE = team.task_queue
      TEMPORAL_TLS        = "true"
      NEXUS_AUTH_AUDIENCE = temporalcloud_nexus_endpoint.team[service].name
    }
  }
}

# --- Secrets: TEMPORAL_API_KEY per service ------------------------------------------------------

output "orchestrator_api_key" {
  description = "TEMPORAL_API_KEY for the orchestrator (write access to its namespace only): terraform output -raw orchestrator_api_key."
  value       = temporalcloud_apikey.orchestrator.token
  sensitive   = true
}

output "team_api_keys" {
  description = "TEMPORAL_API_KEY of each team's tool service, by service (write access to its own namespace only): terraform output -json team_api_keys."
  value       = { for service, key in temporalcloud_apikey.team : service => key.token }
  sensitive   = true
}

# --- For operators ------------------------------------------------------------------------------

output "nexus_endpoint_ids" {
  description = "Ids of the Nexus endpoints, by endpoint name."
  value       = { for service, endpoint in temporalcloud_nexus_endpoint.team : endpoint.name => endpoint.id }
}

output "web_addresses" {
  description = "Temporal Cloud UI address of each namespace, by service."
  value = merge(
    { orchestrator = temporalcloud_namespace.orchestrator.endpoints.web_address },
    { for service, ns in temporalcloud_namespace.team : service => ns.endpoints.web_address },
  )
}
