"""The provider, Magpipe: the client that places, looks up and hangs up calls
(:mod:`orchestrator.provider.client`), and a simulator of the provider's service in both the
shape its document describes and the shape it deploys (:mod:`orchestrator.provider.simulator`)."""

#: The provider's service, unless the config says otherwise.
DEFAULT_BASE_URL = "https://mtxbiyilvgwhbdptysex.supabase.co"
