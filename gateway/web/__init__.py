"""The gateway's pages for a browser on the local network: the installer's commissioning page
(:mod:`gateway.web.installer`, ``derlink gateway installer``) and the running gateway's status page
(:mod:`gateway.web.status_page`, mounted on the local API under ``/ui/``)."""
