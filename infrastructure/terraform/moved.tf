# State written before the teams became a variable had one resource block per team. These blocks
# move those objects to their for_each addresses instead of destroying and recreating them (a
# namespace's histories, an endpoint's id and a live API key would go with them). They change
# nothing for a new state; delete them once every existing state has been applied with this version.

moved {
  from = temporalcloud_namespace.it
  to   = temporalcloud_namespace.team["it"]
}

moved {
  from = temporalcloud_namespace.finance
  to   = temporalcloud_namespace.team["finance"]
}

moved {
  from = temporalcloud_nexus_endpoint.it
  to   = temporalcloud_nexus_endpoint.team["it"]
}

moved {
  from = temporalcloud_nexus_endpoint.finance
  to   = temporalcloud_nexus_endpoint.team["finance"]
}

moved {
  from = temporalcloud_service_account.it
  to   = temporalcloud_service_account.team["it"]
}

moved {
  from = temporalcloud_service_account.finance
  to   = temporalcloud_service_account.team["finance"]
}

moved {
  from = temporalcloud_apikey.it
  to   = temporalcloud_apikey.team["it"]
}

moved {
  from = temporalcloud_apikey.finance
  to   = temporalcloud_apikey.team["finance"]
}
