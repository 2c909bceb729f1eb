"""Every key this app keeps in ``st.session_state``, in one place (pages import these, never spell keys).

Keys that are also widget keys hold that widget's value; the others hold per-session data
(uploads, trained models, the private workspace, the per-session memo).
"""

from __future__ import annotations

# widgets whose values survive page switches (Case review saves them, Export reads them)
CASE = "case"                    # (source, subject_id) of the case under review: a value, never parsed from a label
AXIAL_SLICE = "axial_slice"
VIEWER_JUMP = "viewer_jump"  # counts "go to the map's peak" clicks: a new count moves the viewer's crosshair
CORONAL_ROW = "coronal_row"
SAGITTAL_COL = "sagittal_col"
WINDOW = "window"
SHOW_SALIENCY = "show_saliency"
METHOD = "method"
METHOD_PICKED = "method_picked"  # the user changed the method in the viewer's fragment: the whole page reruns
METHOD_WANTED = "method_wanted"  # the user's method while a model that cannot use it shows another ...
METHOD_STANDIN = "method_standin"  # ... this one in its place (pages._chrome.settle_method)
OPACITY = "opacity"
SHOW_OUTCOME = "show_outcome"  # Case review: a cohort patient's observed outcome marked on its survival chart
VIEWER_KEYS: tuple[str, ...] = (CASE, AXIAL_SLICE, WINDOW, SHOW_SALIENCY, METHOD, OPACITY, SHOW_OUTCOME)
SAVED_VIEWER = "_viewer"         # the viewer settings last shown in Case review
SLICE_CASE = "_slice_case"       # the case the axial slider was last positioned for
VIEWER_READY = "_viewer_ready"   # the CT viewer has reported its CT (or an error) in this session
BELOW_FOLD_WAITING = "_below_fold_waiting"  # Case review's charts below the viewer wait for that report

# sidebar
MODEL_NAME = "model_name"
HORIZON = "horizon_days"
SIDEBAR_KEPT = "_sidebar_kept"   # the sidebar widgets' last values (st.switch_page drops widget state)
NAVIGATED = "_navigated"         # set by app.py on every run: a page run without it was started outside app.py
DEEP_LINK = "_deep_link"         # the page a visitor asked for before app.py's navigation existed
REVIEW_TOKEN = "_review_token"  # this tab's token in the address (?review=...): its review kept on disk (pages/_kept_review.py)
REVIEW_KEPT = "_review_kept"    # ... the review last written under it (or read from it)
REVIEW_SHARED = "_review_shared"  # ... the token came with the address: replaced by a new one at the first change
SIGN_OUT = "sign_out"            # the sidebar's "Sign out" button (only when sign-in is configured)

# audit log (core.app.audit)
LOGIN_AUDITED = "_login_audited"  # the login of this signed-in session has been recorded
AUDITED = "_audited"             # records made with once=True in this session (e.g. a case opened)

# per-session data
UPLOADED_CASE = "uploaded_case"
UPLOAD_STATE = "upload_state"
UPLOAD_COUNTER = "upload_counter"
STUDY_NONCE = "study_nonce"
TIMELINE_STATE = "timeline_state"
FEATURES_STATE = "features_state"  # Upload: a features table read in memory (its rows: clinical values of subjects)
DELETE_CASE = "_delete_case"     # the saved case whose Delete button asks for confirmation
BURNED_IN_OK = "burned_in_ok"    # Upload: the user confirmed the images show no burned-in text
CONTRAST_STATED = "contrast_stated"  # Upload: "yes" / "no" / "" for a study whose file records no contrast
TRAINED_MODELS = "trained_models"
TRAINED_COHORTS = "trained_cohorts"
SITE_MODELS = "site_models"  # the administrator's models ("<label> (site)" -> folder), also in the two above
TRAIN_JOB = "train_job"  # id of this session's latest training job (core.jobs)
RESTARTED_JOBS = "restarted_jobs"  # ids of the stopped trainings this session started again (drawn in the sidebar)
VALIDATE_JOB = "validate_job"  # (job id, model name) of this session's latest external validation (core.jobs)
EXPORTS = "exports"
CASE_NUMBERS = "case_numbers"
READ_OOD = "read_ood"            # cases whose CT the user asked to read although a model withholds it
WORST_LIST = "_worst_list"  # the worst-ordered test patients last opened from Cohort & models (pages/_worst_patients.py)
WORKSPACE = "workspace"
MEMO = "_memo"
MEMO_RUN = "_memo_run"  # values over the memo's whole budget, held for the current run only (pages._memo.new_run)
MEMO_SIZES = "_memo_sizes"  # bytes held by each memo entry (pages._memo.memo bounds their sum)
SUBGROUP_COLUMN = "subgroup_column"
MEDS_COHORT = "meds_cohort"      # the cohort folder last built from a MEDS task on the Cohort page
MEDS_JOB = "meds_job"            # the key of the job building it (pages/_meds.py)
