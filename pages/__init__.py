"""The app's pages (one per file, listed by app.py's ``st.navigation``) and their shared Streamlit glue."""
