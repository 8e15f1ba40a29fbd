# Temporal Cloud for the agent platform: one namespace for the orchestrator and one per team, a
# Nexus endpoint per team that only the orchestrator namespace may call, and a namespace-scoped
# service account with an API key per service. Outputs give each service the TEMPORAL_* values its
# env file needs (deploy/env/cloud/).
#
# The teams are a variable (var.teams), not blocks in this file: `make terraform-teams` writes it
# from the team manifests (<team>/team.toml) to teams.auto.tfvars.json, so a new team needs no edit
# here. Every team resource below is one `for_each` over var.teams, keyed by service name.

locals {
  # Must match TEMPORAL_TASK_QUEUE in deploy/env/cloud/orchestrator.env; a team's comes from its
  # manifest.
  orchestrator_task_queue = "orchestrator"

  orchestrator_namespace_name = "${var.name_prefix}${var.orchestrator_namespace}"
  team_namespace_names        = { for service, team in var.teams : service => "${var.name_prefix}${team.namespace}" }
  team_endpoint_names         = { for service, team in var.teams : service => "${var.name_prefix}${team.endpoint}" }
}

# --- Namespaces --------------------------------------------------------------------------------

resource "temporalcloud_namespace" "orchestrator" {
  name           = local.orchestrator_namespace_name
  regions        = [var.region]
  api_key_auth   = true
  retention_days = var.retention_days

  namespace_lifecycle = {
    enable_delete_protection = var.delete_protection
  }

  lifecycle {
    precondition {
      condition     = length(local.orchestrator_namespace_name) <= 39
      error_message = "name_prefix + orchestrator_namespace must be at most 39 characters."
    }
  }
}

# Conversations set it while a tool call waits for a person's decision, so `agent approvals`
# finds them with one visibility query (shared/config.py: AWAITING_APPROVAL_ATTRIBUTE).
resource "temporalcloud_namespace_search_attribute" "awaiting_approval" {
  namespace_id = temporalcloud_namespace.orchestrator.id
  name         = "AgentAwaitingApproval"
  type         = "bool"
}

resource "temporalcloud_namespace" "team" {
  for_each = var.teams

  name           = local.team_namespace_names[each.key]
  regions        = [var.region]
  api_key_auth   = true
  retention_days = var.retention_days

  namespace_lifecycle = {
    enable_delete_protection = var.delete_protection
  }

  lifecycle {
    precondition {
      condition     = length(local.team_namespace_names[each.key]) <= 39
      error_message = "name_prefix + the team's namespace must be at most 39 characters."
    }
  }
}

# --- Nexus endpoints ---------------------------------------------------------------------------
# They take namespace ids (<name>.<account>), not names. Only the orchestrator may call them.

resource "temporalcloud_nexus_endpoint" "team" {
  for_each = var.teams

  name        = local.team_endpoint_names[each.key]
  description = "${each.value.description == "" ? "Tools of the ${each.key} team." : each.value.description} Served by the ${each.key} worker (list_tools, execute_tool)."

  worker_target = {
    namespace_id = temporalcloud_namespace.team[each.key].id
    task_queue   = each.value.task_queue
  }

  allowed_caller_namespaces = [temporalcloud_namespace.orchestrator.id]
}

# --- Service accounts and API keys -------------------------------------------------------------
# One namespace-scoped service account per service: a leaked key reaches one namespace only.
# Workers need write (start workflows, poll task queues); nothing here needs namespace admin.

resource "temporalcloud_service_account" "orchestrator" {
  name        = "${local.orchestrator_namespace_name}-worker"
  description = "Orchestrator worker and agent CLI."

  namespace_scoped_access = {
    namespace_id = temporalcloud_namespace.orchestrator.id
    permission   = "write"
  }
}

resource "temporalcloud_service_account" "team" {
  for_each = var.teams

  name        = "${local.team_namespace_names[each.key]}-worker"
  description = "Tool service worker of the ${each.key} team."

  namespace_scoped_access = {
    namespace_id = temporalcloud_namespace.team[each.key].id
    permission   = "write"
  }
}

# expiry_time forces a new key when it changes; create_before_destroy keeps the old key valid until
# the new one exists, so a rotation is: change api_key_expiry, apply, redeploy workers with the new key.

resource "temporalcloud_apikey" "orchestrator" {
  display_name = "${local.orchestrator_namespace_name}-worker-${formatdate("YYYYMMDD", var.api_key_expiry)}"
  owner_type   = "service-account"
  owner_id     = temporalcloud_service_account.orchestrator.id
  expiry_time  = var.api_key_expiry

  lifecycle {
    create_before_destroy = true
  }
}

resource "temporalcloud_apikey" "team" {
  for_each = var.teams

  display_name = "${local.team_namespace_names[each.key]}-worker-${formatdate("YYYYMMDD", var.api_key_expiry)}"
  owner_type   = "service-account"
  owner_id     = temporalcloud_service_account.team[each.key].id
  expiry_time  = var.api_key_expiry

  lifecycle {
    create_before_destroy = true
  }
}
