"""Outbound adapters to Microsoft: the credential, the Exchange admin API, Microsoft Graph.

They speak the services' protocols and translate their failures into `shared.errors`; they make no
policy decision. Retries with Retry-After come from the SDK pipelines.
"""
