// SMTP AUTH Guard on Azure Functions Flex Consumption, in one resource group.
//
// One user-assigned managed identity is the app's only identity: it reads and writes the storage account
// (host storage, deployment package, the app's tables), sends telemetry to Application Insights with
// Entra ID, and is the identity Exchange Online and Graph grant (outside Bicep: see infra/README.md).
// No keys or connection strings exist: the storage account refuses shared-key access and Application
// Insights refuses local auth. App Service Authentication (Easy Auth) with Entra ID sits in front of
// every function except the health check. The sweeps start in report mode.
targetScope = 'resourceGroup'

@description('Short name for this deployment; resource names derive from it.')
@minLength(2)
@maxLength(12)
param environmentName string

@description('Azure region of every resource (one that offers Flex Consumption).')
param location string = resourceGroup().location

@description('Client id of the Entra app registration users sign in to (Easy Auth). Create it first: infra/README.md.')
param authClientId string

@description('App setting that holds that registration\'s client secret; empty: sign-in uses ID tokens without a secret.')
param authClientSecretSettingName string = ''

@description('Mailbox the notifications are sent from (NOTIFY_FROM).')
param notifyFrom string

@description('Object id of the Entra group whose members approve (APPROVER_GROUP_ID); give this and/or approvers.')
param approverGroupId string = ''

@description('Object ids of individual approvers, comma-separated (APPROVERS).')
param approvers string = ''

@description('report (default: plan and audit only) or enforce. Switch to enforce after reading a report.')
@allowed([
  'report'
  'enforce'
])
param enforcementMode string = 'report'

@description('OAuth-only exceptions: off (default), report or enforce. Enforce assigns the users of OAuth-only exceptions an authentication policy that blocks Basic SMTP (docs/permissions.md).')
@allowed([
  'off'
  'report'
  'enforce'
])
param oauthOnlyPolicy string = 'off'

@description('Public https:// URL of the app, used in mailed links. Default: the app\'s azurewebsites.net name.')
param publicBaseUrl string = ''

@description('Highest number of instances Flex Consumption may scale to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 10

param tags object = {}

var suffix = uniqueString(subscription().id, resourceGroup().id, environmentName)
var appName = 'func-${environmentName}-${suffix}'
var storageName = take('st${replace(toLower(environmentName), '-', '')}${suffix}', 24)
var deploymentContainer = 'app-package-${take(suffix, 8)}'
var baseUrl = empty(publicBaseUrl) ? 'https://${appName}.azurewebsites.net' : publicBaseUrl

// Built-in role ids: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // host storage and the deployment package
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // the app's tables
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // telemetry with Entra ID
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${environmentName}-${suffix}'
  location: location
  tags: tags
}

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${environmentName}-${suffix}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${environmentName}-${suffix}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource packageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainer
  properties: {
    publicAccess: 'None'
  }
}

resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource tableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, roles.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, identity.id, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-${environmentName}-${suffix}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [
        // Host storage through the managed identity: no connection string.
        { name: 'AzureWebJobsStorage__accountName', value: storage.name }
        { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
        { name: 'AzureWebJobsStorage__clientId', value: identity.properties.clientId }
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: insights.properties.ConnectionString }
        { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identity.properties.clientId};Authorization=AAD' }
        // The app's own settings (README, "Settings").
        { name: 'AZURE_TENANT_ID', value: tenant().tenantId }
        { name: 'AZURE_CLIENT_ID', value: identity.properties.clientId }
        { name: 'ENFORCEMENT_MODE', value: enforcementMode }
        { name: 'OAUTH_ONLY_POLICY', value: oauthOnlyPolicy }
        { name: 'PUBLIC_BASE_URL', value: baseUrl }
        { name: 'NOTIFY_FROM', value: notifyFrom }
        { name: 'APPROVER_GROUP_ID', value: approverGroupId }
        { name: 'APPROVERS', value: approvers }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: 2048
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
  dependsOn: [
    blobOwner
    tableContributor
    metricsPublisher
    packageContainer
  ]
}

// App Service Authentication: sign-in required everywhere but the health check. The app trusts the
// principal header only because WEBSITE_AUTH_ENABLED is then set by the platform.
resource auth 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: app
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'RedirectToLoginPage'
      redirectToProvider: 'azureactivedirectory'
      excludedPaths: [
        '/api/health'
      ]
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: authClientId
          clientSecretSettingName: empty(authClientSecretSettingName) ? null : authClientSecretSettingName
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: [
            'api://${authClientId}'
            authClientId
          ]
        }
      }
    }
    login: {
      // An approval link carries its one-time code after "#": keep it through sign-in.
      preserveUrlFragmentsForLogins: true
      tokenStore: {
        enabled: false
      }
    }
    httpSettings: {
      requireHttps: true
    }
  }
}

output AZURE_FUNCTION_APP_NAME string = app.name
output PUBLIC_BASE_URL string = baseUrl
output MANAGED_IDENTITY_PRINCIPAL_ID string = identity.properties.principalId
output MANAGED_IDENTITY_CLIENT_ID string = identity.properties.clientId
output STORAGE_ACCOUNT_NAME string = storage.name
